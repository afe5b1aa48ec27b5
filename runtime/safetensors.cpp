#include "runtime/safetensors.h"

#include <ATen/ops/from_blob.h>
#include <sys/stat.h>
#include <xxhash.h>

#include <bit>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace kiv {
namespace {

using nlohmann::json;

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; views over it need a little-endian host");

// The safetensors library refuses headers over 100 MB; a larger length is damage, not a model.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Element sizes of the dtypes the format defines (so any valid file's sizes can be checked), and
// the torch dtype for the ones kiv loads.
struct DtypeInfo {
  const char* name;
  uint64_t size_bytes;
  bool loadable;
  at::ScalarType scalar_type;
};
constexpr DtypeInfo kDtypes[] = {
    {"F32", 4, true, at::kFloat},     {"BF16", 2, true, at::kBFloat16},
    {"F16", 2, true, at::kHalf},      {"F64", 8, false, at::kDouble},
    {"I64", 8, false, at::kLong},     {"I32", 4, false, at::kInt},
    {"I16", 2, false, at::kShort},    {"I8", 1, false, at::kChar},
    {"U8", 1, false, at::kByte},      {"BOOL", 1, false, at::kBool},
    {"F8_E4M3", 1, false, at::kByte}, {"F8_E5M2", 1, false, at::kByte},
};

const DtypeInfo* FindDtype(const std::string& name) {
  for (const DtypeInfo& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

uint64_t ReadU64Le(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

bool IsFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// One header entry, checked against the data section's size.
Status ParseEntry(const std::string& path, const std::string& name, const json& e,
                  const uint8_t* data_begin, uint64_t data_bytes, SafetensorsEntry* out) {
  const std::string where = path + ": tensor '" + name + "'";
  if (!e.is_object() || !e.contains("dtype") || !e["dtype"].is_string() || !e.contains("shape") ||
      !e["shape"].is_array() || !e.contains("data_offsets") || !e["data_offsets"].is_array() ||
      e["data_offsets"].size() != 2)
    return Status::Corruption(where + " has a malformed header entry: " + e.dump());
  out->dtype = e["dtype"].get<std::string>();
  const DtypeInfo* dt = FindDtype(out->dtype);
  if (!dt) return Status::Corruption(where + " has unknown dtype '" + out->dtype + "'");
  uint64_t numel = 1;
  for (const json& d : e["shape"]) {
    if (!d.is_number_unsigned()) return Status::Corruption(where + " has a bad shape " + e.dump());
    const uint64_t dim = d.get<uint64_t>();
    if (dim != 0 && numel > (uint64_t{1} << 56) / dim)
      return Status::Corruption(where + " has an impossible shape " + e["shape"].dump());
    numel *= dim;
    out->shape.push_back(static_cast<int64_t>(dim));
  }
  const json& off = e["data_offsets"];
  if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned())
    return Status::Corruption(where + " has bad data_offsets " + off.dump());
  const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
  if (begin > end)
    return Status::Corruption(where + " has data_offsets " + off.dump() + " reversed");
  if (end - begin != numel * dt->size_bytes)
    return Status::Corruption(where + " holds " + std::to_string(end - begin) +
                              " bytes but its shape and dtype need " +
                              std::to_string(numel * dt->size_bytes));
  if (end > data_bytes)
    return Status::Corruption(path + " is truncated: tensor '" + name + "' needs bytes [" +
                              std::to_string(begin) + ", " + std::to_string(end) +
                              ") of the data section, which holds only " +
                              std::to_string(data_bytes) + " bytes");
  out->data = data_begin + begin;
  out->size_bytes = end - begin;
  return Status::Ok();
}

void HashU64(XXH3_state_t* s, uint64_t v) {
  uint8_t b[8];
  std::memcpy(b, &v, 8);  // little-endian host (static_assert above)
  XXH3_64bits_update(s, b, 8);
}

}  // namespace

Status SafetensorsWeights::AddFile(const std::string& path) {
  Result<MappedFile> mapped = MappedFile::Open(path);
  if (!mapped.ok()) {
    if (mapped.status().code() == Status::Code::kNotFound) return mapped.status();
    return Status::Corruption("cannot read weights '" + path + "': " + mapped.status().message());
  }
  auto file = std::make_shared<const MappedFile>(std::move(mapped).value());
  const uint64_t size = file->size();
  if (size < 8)
    return Status::Corruption(path + " is truncated: " + std::to_string(size) +
                              " bytes, less than the 8-byte header length");
  const uint64_t header_bytes = ReadU64Le(file->data());
  if (header_bytes > kMaxHeaderBytes)
    return Status::Corruption(path + " has a bad header: its length field says " +
                              std::to_string(header_bytes) + " bytes");
  if (8 + header_bytes > size)
    return Status::Corruption(path + " is truncated: its header needs " +
                              std::to_string(8 + header_bytes) + " bytes but the file has " +
                              std::to_string(size));
  const char* text = reinterpret_cast<const char*>(file->data() + 8);
  json header = json::parse(text, text + header_bytes, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object())
    return Status::Corruption(path + " has a bad header: it is not a JSON object");
  const uint8_t* data_begin = file->data() + 8 + header_bytes;
  const uint64_t data_bytes = size - 8 - header_bytes;
  for (const auto& [name, e] : header.items()) {
    if (name == "__metadata__") continue;
    SafetensorsEntry entry;
    KIV_RETURN_IF_ERROR(ParseEntry(path, name, e, data_begin, data_bytes, &entry));
    entry.file = file;
    if (!entries_.emplace(name, std::move(entry)).second)
      return Status::Corruption(path + ": tensor '" + name + "' appears in two shards");
  }
  return Status::Ok();
}

Result<SafetensorsWeights> SafetensorsWeights::OpenFile(const std::string& path) {
  SafetensorsWeights w;
  w.source_ = path;
  KIV_RETURN_IF_ERROR(w.AddFile(path));
  return w;
}

Result<SafetensorsWeights> SafetensorsWeights::OpenDir(const std::string& dir) {
  const std::string single = dir + "/model.safetensors";
  if (IsFile(single)) return OpenFile(single);
  const std::string index_path = dir + "/model.safetensors.index.json";
  std::ifstream in(index_path, std::ios::binary);
  if (!in)
    return Status::NotFound("no weights in '" + dir +
                            "': neither model.safetensors nor model.safetensors.index.json");
  std::ostringstream text;
  text << in.rdbuf();
  json index = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
      !index["weight_map"].is_object())
    return Status::Corruption(index_path + " is not a safetensors index (no weight_map object)");
  std::set<std::string> shards;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string() || shard.get<std::string>().find('/') != std::string::npos)
      return Status::Corruption(index_path + ": tensor '" + name + "' names a bad shard " +
                                shard.dump());
    shards.insert(shard.get<std::string>());
  }
  if (shards.empty()) return Status::Corruption(index_path + " names no shards");
  SafetensorsWeights w;
  w.source_ = index_path;
  for (const std::string& shard : shards) KIV_RETURN_IF_ERROR(w.AddFile(dir + "/" + shard));
  for (const auto& [name, shard] : index["weight_map"].items()) {
    const SafetensorsEntry* e = w.Find(name);
    if (!e || e->file->path() != dir + "/" + shard.get<std::string>())
      return Status::Corruption(index_path + " puts tensor '" + name + "' in " +
                                shard.get<std::string>() + ", which does not hold it");
  }
  return w;
}

const SafetensorsEntry* SafetensorsWeights::Find(const std::string& name) const {
  auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

Result<at::Tensor> SafetensorsWeights::Tensor(const std::string& name) const {
  const SafetensorsEntry* e = Find(name);
  if (!e) return Status::NotFound(source_ + " has no tensor '" + name + "'");
  const DtypeInfo* dt = FindDtype(e->dtype);
  if (!dt->loadable)
    return Status::NotImplemented(source_ + ": tensor '" + name + "' has dtype " + e->dtype +
                                  " (kiv loads F32, BF16 and F16)");
  const at::TensorOptions options = at::TensorOptions().dtype(dt->scalar_type);
  void* data = const_cast<uint8_t*>(e->data);  // read-only mapping; see the header
  if (reinterpret_cast<uintptr_t>(data) % dt->size_bytes != 0) {
    // Copied as bytes (aligned by the allocator), then reinterpreted: no misaligned float reads.
    const int64_t size = static_cast<int64_t>(e->size_bytes);
    return at::from_blob(data, {size}, at::TensorOptions().dtype(at::kByte))
        .clone()
        .view(dt->scalar_type)
        .view(e->shape);
  }
  // The deleter holds the mapping: the view stays valid after this object is gone.
  std::shared_ptr<const MappedFile> keep = e->file;
  return at::from_blob(
      data, e->shape, [keep](void*) mutable { keep.reset(); }, options);
}

uint64_t SafetensorsWeights::HashWeights() const {
  XXH3_state_t* s = XXH3_createState();
  XXH3_64bits_reset(s);
  for (const auto& [name, e] : entries_) {
    XXH3_64bits_update(s, name.c_str(), name.size() + 1);
    XXH3_64bits_update(s, e.dtype.c_str(), e.dtype.size() + 1);
    HashU64(s, e.shape.size());
    for (int64_t d : e.shape) HashU64(s, static_cast<uint64_t>(d));
    HashU64(s, e.size_bytes);
    XXH3_64bits_update(s, e.data, e.size_bytes);
  }
  const uint64_t h = XXH3_64bits_digest(s);
  XXH3_freeState(s);
  return h;
}

}  // namespace kiv
