// Runs the `kiv` binary as a user would: exit codes, the one-line error promise, and what the
// archive commands report for clean, damaged and unreadable files.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "cli/json.h"
#include "storage/format.h"
#include "storage/reader.h"

namespace fs = std::filesystem;

#include "tests/cli/run_kiv.h"

using namespace kiv::test;

namespace {

// A small synthetic archive: 700 tokens in 128-token segments, a commit every 256 tokens.
fs::path Synth(const TempDir& dir, const std::string& name = "a.kiv") {
  const fs::path p = dir / name;
  const Outcome o =
      RunKiv({"archive", "synth", p.string(), "--tokens", "700", "--layers", "2", "--kv-heads", "2",
              "--q-heads", "4", "--segment-tokens", "128", "--commit-every", "256"});
  INFO(o.all());
  REQUIRE(o.exited);
  REQUIRE(o.code == 0);
  return p;
}

// Checks the promise every failure keeps: exit 1, not a signal, one line on stderr naming path.
void ExpectOneLineFailure(const Outcome& o, const std::string& path) {
  INFO("stdout: " << o.out << "\nstderr: " << o.err);
  CHECK(o.exited);
  CHECK(o.code == 1);
  CHECK(o.err_lines() == 1);
  CHECK(o.err.find(path) != std::string::npos);
}

void FlipByte(const fs::path& p, uint64_t offset) {
  std::string bytes = ReadFile(p);
  REQUIRE(offset < bytes.size());
  bytes[offset] = static_cast<char>(bytes[offset] ^ 0x5A);
  WriteFile(p, bytes);
}

}  // namespace

TEST_CASE("synth, then inspect reports what was written") {
  TempDir dir;
  const fs::path p = Synth(dir);
  const Outcome human = RunKiv({"archive", "inspect", p.string()});
  INFO(human.all());
  CHECK(human.exited);
  CHECK(human.code == 0);
  CHECK(human.out.find("tokens      700") != std::string::npos);
  CHECK(human.out.find("synthetic") != std::string::npos);
  CHECK(human.out.find("K6V6") != std::string::npos);
  CHECK(human.err.empty());

  const Outcome json = RunKiv({"archive", "inspect", p.string(), "--json"});
  INFO(json.all());
  CHECK(json.code == 0);
  CHECK(json.out.find("\"tokens\": 700") != std::string::npos);
  CHECK(json.out.front() == '{');
  CHECK(json.out.find("\"segments\"") != std::string::npos);
  CHECK(json.out.find("\"count\": 6") != std::string::npos);  // ceil(700 / 128) with cuts at 256
}

TEST_CASE("synth is deterministic and refuses to overwrite without --force") {
  TempDir dir;
  const fs::path a = Synth(dir, "a.kiv");
  const fs::path b = Synth(dir, "b.kiv");
  CHECK(ReadFile(a) == ReadFile(b));
  ExpectOneLineFailure(RunKiv({"archive", "synth", a.string(), "--tokens", "10"}), a.string());
  const Outcome forced = RunKiv({"archive", "synth", a.string(), "--tokens", "10", "--force"});
  CHECK(forced.code == 0);
}

TEST_CASE("verify passes a clean archive") {
  TempDir dir;
  const fs::path p = Synth(dir);
  const Outcome o = RunKiv({"archive", "verify", p.string()});
  INFO(o.all());
  CHECK(o.exited);
  CHECK(o.code == 0);
  CHECK(o.err.empty());
  CHECK(o.out.find("checksums") != std::string::npos);
  const Outcome quiet = RunKiv({"archive", "verify", p.string(), "--quiet"});
  CHECK(quiet.code == 0);
  CHECK(quiet.all().empty());
  const Outcome json = RunKiv({"archive", "verify", p.string(), "--json"});
  CHECK(json.code == 0);
  CHECK(json.out.find("\"verdict\": \"clean\"") != std::string::npos);
}

TEST_CASE("unreadable files: inspect and verify fail with one line naming the path") {
  TempDir dir;
  const fs::path text = dir / "notes.txt";
  WriteFile(text, "these are notes, not an archive\n");
  const fs::path empty = dir / "empty.kiv";
  WriteFile(empty, "");
  const fs::path directory = dir / "folder.kiv";
  fs::create_directories(directory);
  const fs::path missing = dir / "missing.kiv";

  // A newer kiv's file: min_read_version above this build's, with a valid header checksum.
  const fs::path newer = Synth(dir, "newer.kiv");
  std::string bytes = ReadFile(newer);
  auto* data = reinterpret_cast<uint8_t*>(bytes.data());
  auto header = kiv::format::Load<kiv::format::FileHeader>(data);
  header.min_read_version = kiv::format::kFormatVersion + 1;
  kiv::format::Store(data, header);
  header.header_checksum = kiv::format::Checksum(data, kiv::format::kFileHeaderChecksummed, 0);
  kiv::format::Store(data, header);
  WriteFile(newer, bytes);

  for (const fs::path& p : {text, empty, directory, missing, newer}) {
    for (const char* command : {"inspect", "verify"}) {
      CAPTURE(p);
      CAPTURE(command);
      ExpectOneLineFailure(RunKiv({"archive", command, p.string()}), p.string());
      ExpectOneLineFailure(RunKiv({"archive", command, p.string(), "--json"}), p.string());
    }
  }
}

TEST_CASE("usage errors exit 2") {
  CHECK(RunKiv({"archive", "verify"}).code == 2);
  CHECK(RunKiv({"archive", "inspect"}).code == 2);
  CHECK(RunKiv({"archive", "synth", "/nonexistent/x.kiv"}).code == 2);  // no --tokens
  CHECK(RunKiv({"archive", "synth", "/nonexistent/x.kiv", "--tokens", "many"}).code == 2);
  CHECK(RunKiv({"archive", "synth", "/nonexistent/x.kiv", "--tokens", "1", "--head-dim", "65"})
            .code == 2);
  CHECK(RunKiv({"archive", "frobnicate"}).code == 2);
  CHECK(RunKiv({}).code == 2);
  const Outcome help = RunKiv({"--help"});
  CHECK(help.code == 0);
  CHECK(help.out.find("Examples") != std::string::npos);
  const Outcome sub_help = RunKiv({"archive", "synth", "--help"});
  CHECK(sub_help.code == 0);
  CHECK(sub_help.out.find("SYNTHETIC") != std::string::npos);
}

TEST_CASE("verify names the offset of a flipped byte in a segment body") {
  TempDir dir;
  const fs::path p = Synth(dir);
  uint64_t offset = 0;
  {
    auto reader = kiv::ArchiveReader::Open(p.string());
    REQUIRE(reader.ok());
    REQUIRE(reader.value()->segment_count() > 1);
    const kiv::SegmentInfo& s = reader.value()->segment(1);
    offset = s.body_offset() + s.layout.records_offset + 7;
  }
  FlipByte(p, offset);
  const Outcome o = RunKiv({"archive", "verify", p.string()});
  INFO(o.all());
  CHECK(o.exited);
  CHECK(o.code == 1);
  CHECK(o.all().find("offset") != std::string::npos);
  CHECK(o.err_lines() == 1);
}

TEST_CASE("verify reports bytes after the last commit") {
  TempDir dir;
  const fs::path p = Synth(dir);
  WriteFile(p, ReadFile(p) + std::string(100, 'x'));
  const Outcome o = RunKiv({"archive", "verify", p.string()});
  INFO(o.all());
  CHECK(o.code == 1);
  CHECK(o.err.find("not committed") != std::string::npos);
  CHECK(o.err_lines() == 1);
  const Outcome inspect = RunKiv({"archive", "inspect", p.string()});
  CHECK(inspect.code == 0);
  CHECK(inspect.out.find("uncommitted 100 bytes") != std::string::npos);
}

TEST_CASE("a file-size limit is an error, not a kill") {
  TempDir dir;
  const fs::path p = dir / "big.kiv";
  const Outcome o = RunKiv({"archive", "synth", p.string(), "--tokens", "20000"}, 1 << 20);
  ExpectOneLineFailure(o, p.string());
}

TEST_CASE("bench append runs and writes a result with its environment") {
  TempDir dir;
  const fs::path result = dir / "result.json";
  // A KIV_* variable set when a benchmark runs is part of its environment (the A/B switches).
  REQUIRE(setenv("KIV_TEST_SWITCH", "0", 1) == 0);
  const Outcome o = RunKiv({"bench", "append", "--dir", dir.path().string(), "--gib", "0.01",
                            "--runs", "1", "--segment-tokens", "64", "--out", result.string()});
  unsetenv("KIV_TEST_SWITCH");
  INFO(o.all());
  CHECK(o.code == 0);
  const std::string json = ReadFile(result);
  CHECK(json.find("\"append_gbps_median\"") != std::string::npos);
  CHECK(json.find("\"environment\"") != std::string::npos);
  CHECK(json.find("\"git_commit\"") != std::string::npos);
  CHECK(json.find("\"KIV_TEST_SWITCH\": \"0\"") != std::string::npos);
  size_t archives = 0;
  for (const auto& e : fs::directory_iterator(dir.path()))
    archives += e.path().extension() == ".kiv";
  CHECK(archives == 0);  // the benchmark deletes its archive
}

TEST_CASE("bench codec times every codec and signature width and writes JSON") {
  TempDir dir;
  const fs::path result = dir / "codec.json";
  const Outcome o =
      RunKiv({"bench", "codec", "--tokens", "200", "--runs", "1", "--out", result.string()});
  INFO(o.all());
  CHECK(o.code == 0);
  const std::string json = ReadFile(result);
  for (const char* key : {"\"encode_us\"", "\"decode_us\"", "\"sign_reference_us\"", "\"environment\""})
    CHECK(json.find(key) != std::string::npos);
  CHECK(o.all().find("K6V6, rotated keys") != std::string::npos);
  CHECK(RunKiv({"bench", "codec", "--tokens", "0"}).code != 0);  // refused by name
}

TEST_CASE("JSON strings are escaped and always valid UTF-8") {
  using kiv::cli::JsonQuote;
  CHECK(JsonQuote("plain") == "\"plain\"");
  CHECK(JsonQuote("a\"b\\c") == "\"a\\\"b\\\\c\"");
  CHECK(JsonQuote("tab\tnl\n") == "\"tab\\tnl\\n\"");
  CHECK(JsonQuote(std::string("\x01\x1f", 2)) == "\"\\u0001\\u001f\"");
  CHECK(JsonQuote("caf\xc3\xa9") == "\"caf\xc3\xa9\"");             // valid UTF-8 passes
  CHECK(JsonQuote("bad\xff") == "\"bad\\ufffd\"");                  // a stray byte
  CHECK(JsonQuote("\xc0\xaf") == "\"\\ufffd\\ufffd\"");             // an overlong '/'
  CHECK(JsonQuote("\xed\xa0\x80") == "\"\\ufffd\\ufffd\\ufffd\"");  // a UTF-16 surrogate

  std::ostringstream out;
  kiv::cli::JsonWriter w(out);
  w.BeginObject().Field("n", uint64_t{1}).Key("list").BeginArray().Uint(2).Double(0.5);
  w.BeginObject()
      .EndObject()
      .EndArray()
      .Field("nan", std::numeric_limits<double>::quiet_NaN())
      .EndObject()
      .Finish();
  CHECK(out.str() ==
        "{\n  \"n\": 1,\n  \"list\": [\n    2,\n    0.5,\n    {}\n  ],\n"
        "  \"nan\": null\n}\n");
}
