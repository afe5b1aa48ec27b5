// kiv archive inspect FILE [--json] [--all-segments]: what an archive holds, read from its header
// and commits. Opening checks the header and every commit's checksum; segment bodies are left to
// `kiv archive verify`, and the report says so.
#include <iostream>
#include <string>

#include "cli/commands.h"
#include "cli/json.h"
#include "cli/util.h"
#include "storage/format.h"
#include "storage/reader.h"

namespace kiv::cli {

namespace {

struct Options {
  std::string path;
  bool json = false;
  bool all_segments = false;
};

// Segments are listed one per line up to this many; more are summarized unless --all-segments.
constexpr size_t kListSegmentsMax = 16;

// Everything the report shows, gathered once so the human and JSON forms cannot disagree.
struct Facts {
  format::FileHeader header;
  const ArchiveSpec* spec = nullptr;
  const ScanResult* scan = nullptr;
  const CommitInfo* last_commit = nullptr;
  uint32_t checkpoint_tokens = 0;
  uint64_t tokens = 0;
  bool list_segments = false;
};

std::string CodecName(uint32_t codec_id) {
  if (const char* name = format::CodecName(codec_id)) return name;
  return "unknown codec " + std::to_string(codec_id);
}

std::string CheckpointCodecName(uint32_t codec) {
  if (codec == format::kCheckpointRaw) return "raw";
  if (codec == format::kCheckpointZstd) return "zstd";
  return "unknown " + std::to_string(codec);
}

// File bytes per token, or a negative number when there are no tokens to divide by.
double FileBytesPerToken(const Facts& f) {
  if (f.tokens == 0) return -1.0;
  return static_cast<double>(f.scan->file_bytes) / static_cast<double>(f.tokens);
}

void PrintSegments(const Facts& f) {
  const auto& segments = f.scan->segments;
  std::cout << "segments    " << Grouped(segments.size()) << '\n';
  if (f.list_segments) {
    for (size_t i = 0; i < segments.size(); ++i) {
      const SegmentInfo& s = segments[i];
      std::cout << "  #" << i << "  first token " << Grouped(s.first_token) << ", "
                << Grouped(s.layout.token_count) << " tokens, at offset " << Grouped(s.offset)
                << '\n';
    }
  } else if (!segments.empty()) {
    std::cout << "            (more than " << kListSegmentsMax
              << "; --all-segments lists each one's first token, token count and offset)\n";
  }
}

void PrintHuman(const Options& o, const Facts& f) {
  const format::FileHeader& h = f.header;
  const ModelFingerprint& m = f.spec->model;
  const CodecParams& c = f.spec->codec;
  std::cout << "archive     " << o.path << '\n'
            << "format      version " << h.format_version
            << " (readers need >= " << h.min_read_version
            << ", writers need >= " << h.min_write_version << "; this kiv reads and writes "
            << format::kFormatVersion << ")\n"
            << "model       " << m.architecture << ": " << m.num_layers << " layers, "
            << m.num_q_heads << " q heads, " << m.num_kv_heads << " kv heads, head dim "
            << m.head_dim << ", vocab " << Grouped(m.vocab_size) << '\n'
            << "            weights hash " << Hex64(m.weights_hash) << ", tokenizer hash "
            << Hex64(m.tokenizer_hash) << '\n'
            << "codec       " << CodecName(c.codec_id) << ": " << f.spec->record_bytes()
            << "-byte records, " << c.signature_bits << "-bit signatures, projection seed "
            << Hex64(c.projection_seed) << ", centred " << (c.centred ? "yes" : "no") << '\n'
            << "hot tier    " << c.sinks << " sink tokens, " << c.hot_window << "-token window\n"
            << "tokens      " << Grouped(f.tokens) << '\n';
  PrintSegments(f);
  const CommitInfo& lc = *f.last_commit;
  std::cout << "commits     " << Grouped(f.scan->commits.size()) << ", the last at offset "
            << Grouped(lc.offset) << " with a checkpoint of " << f.checkpoint_tokens << " tokens, "
            << Grouped(lc.checkpoint_raw_bytes) << " bytes raw, "
            << Grouped(lc.checkpoint_stored_bytes) << " stored ("
            << CheckpointCodecName(lc.checkpoint_codec) << ")\n"
            << "file        " << Grouped(f.scan->file_bytes) << " bytes ("
            << HumanBytes(f.scan->file_bytes) << ")\n";
  const double per_token = FileBytesPerToken(f);
  std::cout << "per token   ";
  if (per_token < 0) {
    std::cout << "n/a in the file (no tokens)";
  } else {
    std::cout << Grouped(static_cast<uint64_t>(per_token + 0.5)) << " bytes in the file";
  }
  std::cout << "; " << Grouped(f.spec->bytes_per_token())
            << " of records, signatures, id and position\n";
  std::cout << "uncommitted " << Grouped(f.scan->tail_bytes) << " bytes";
  if (f.scan->tail_bytes > 0) std::cout << " after the last commit (" << f.scan->tail_reason << ")";
  std::cout << '\n'
            << "checksums   header and " << Count(f.scan->commits.size(), "commit")
            << " valid on open; run `kiv archive verify` to check every segment\n";
}

void WriteJsonSegments(JsonWriter& w, const Facts& f) {
  w.Key("segments").BeginObject().Field("count", uint64_t{f.scan->segments.size()});
  w.Field("listed", f.list_segments);
  if (f.list_segments) {
    w.Key("list").BeginArray();
    for (const SegmentInfo& s : f.scan->segments) {
      w.BeginObject().Field("first_token", s.first_token);
      w.Field("tokens", s.layout.token_count).Field("offset", s.offset).EndObject();
    }
    w.EndArray();
  }
  w.EndObject();
}

void WriteJsonModelCodec(JsonWriter& w, const Facts& f) {
  const ModelFingerprint& m = f.spec->model;
  w.Key("model").BeginObject().Field("architecture", m.architecture);
  w.Field("layers", m.num_layers).Field("q_heads", m.num_q_heads);
  w.Field("kv_heads", m.num_kv_heads).Field("head_dim", m.head_dim);
  w.Field("vocab", m.vocab_size).Field("weights_hash", Hex64(m.weights_hash));
  w.Field("tokenizer_hash", Hex64(m.tokenizer_hash)).EndObject();
  const CodecParams& c = f.spec->codec;
  w.Key("codec").BeginObject().Field("id", c.codec_id).Field("name", CodecName(c.codec_id));
  w.Field("record_bytes", f.spec->record_bytes()).Field("signature_bits", c.signature_bits);
  w.Field("projection_seed", Hex64(c.projection_seed)).Field("centred", c.centred);
  w.Field("sinks", c.sinks).Field("hot_window", c.hot_window).EndObject();
}

void PrintJson(const Options& o, const Facts& f) {
  JsonWriter w(std::cout);
  const format::FileHeader& h = f.header;
  w.BeginObject().Field("path", o.path);
  w.Key("format").BeginObject().Field("version", uint32_t{h.format_version});
  w.Field("min_read_version", uint32_t{h.min_read_version});
  w.Field("min_write_version", uint32_t{h.min_write_version});
  w.Field("header_bytes", f.scan->header_bytes).EndObject();
  WriteJsonModelCodec(w, f);
  w.Field("tokens", f.tokens);
  WriteJsonSegments(w, f);
  const CommitInfo& lc = *f.last_commit;
  w.Key("commits").BeginObject().Field("count", uint64_t{f.scan->commits.size()});
  w.Field("last_offset", lc.offset).Key("last_checkpoint").BeginObject();
  w.Field("tokens", f.checkpoint_tokens).Field("raw_bytes", lc.checkpoint_raw_bytes);
  w.Field("stored_bytes", lc.checkpoint_stored_bytes);
  w.Field("codec", CheckpointCodecName(lc.checkpoint_codec)).EndObject().EndObject();
  w.Field("file_bytes", f.scan->file_bytes);
  w.Key("bytes_per_token").BeginObject().Key("file");
  const double per_token = FileBytesPerToken(f);
  if (per_token < 0) {
    w.Null();
  } else {
    w.Double(per_token);
  }
  w.Field("records_signatures_id_position", f.spec->bytes_per_token()).EndObject();
  w.Key("uncommitted").BeginObject().Field("bytes", f.scan->tail_bytes);
  w.Field("reason", f.scan->tail_reason).EndObject();
  w.Key("checked_on_open").BeginObject().Field("header", true);
  w.Field("commits", uint64_t{f.scan->commits.size()}).Field("segments", false).EndObject();
  w.EndObject().Finish();
}

int RunArchiveInspect(const Options& o) {
  Result<std::unique_ptr<ArchiveReader>> opened = ArchiveReader::Open(o.path);
  if (!opened.ok()) {
    return Fail("cannot open " + Quoted(o.path) + ": " + opened.status().ToString());
  }
  const ArchiveReader& reader = *opened.value();
  if (reader.mapped_bytes() < format::kFileHeaderBytes || reader.scan().commits.empty()) {
    // Open succeeding promises both; a failure here is a storage bug, said plainly.
    return Fail("cannot inspect " + Quoted(o.path) +
                ": the reader opened it without a header "
                "or a commit");
  }
  Facts f;
  f.header = format::Load<format::FileHeader>(reader.data());
  f.spec = &reader.spec();
  f.scan = &reader.scan();
  f.last_commit = &reader.scan().commits.back();
  f.tokens = reader.token_count();
  f.list_segments = o.all_segments || f.scan->segments.size() <= kListSegmentsMax;
  f.checkpoint_tokens = f.last_commit->checkpoint_tokens;
  if (o.json) {
    PrintJson(o, f);
  } else {
    PrintHuman(o, f);
  }
  return kExitOk;
}

}  // namespace

void SetupArchiveInspect(CLI::App& archive) {
  auto o = std::make_shared<Options>();
  CLI::App* sub = archive.add_subcommand(
      "inspect", "Show what an archive holds: format, model, codec, tokens, segments, commits");
  sub->add_option("FILE", o->path, "The .kiv archive")->required();
  sub->add_flag("--json", o->json, "Print one JSON object instead of the report");
  sub->add_flag("--all-segments", o->all_segments,
                "List every segment (by default only when there are at most 16)");
  sub->footer(R"(Opening checks the header and every commit's checksum; segment bodies are checked
by `kiv archive verify`.

Examples:
  kiv archive inspect chat.kiv
  kiv archive inspect chat.kiv --json | jq .tokens)");
  OnRun(*sub, [o] { return RunArchiveInspect(*o); });
}

}  // namespace kiv::cli
