// Reads HuggingFace safetensors weights without copying them: each file is mmapped, its JSON header
// is checked against the file's size, and a tensor is a view (from_blob) over the mapping that
// keeps the mapping alive for as long as the tensor lives.
//
// The file format: an 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the data section; offsets are relative to the data section's first byte.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "storage/mapped_file.h"
#include "storage/status.h"

namespace kiv {

struct SafetensorsEntry {
  std::string dtype;              // as the header spells it: "F32", "BF16", "F16", ...
  std::vector<int64_t> shape;     // empty for a scalar
  const uint8_t* data = nullptr;  // into the mapping of `file`
  uint64_t size_bytes = 0;
  std::shared_ptr<const MappedFile> file;
};

class SafetensorsWeights {
 public:
  // `dir`/model.safetensors, or the shards that `dir`/model.safetensors.index.json names.
  static Result<SafetensorsWeights> OpenDir(const std::string& dir);
  // One .safetensors file.
  static Result<SafetensorsWeights> OpenFile(const std::string& path);

  // nullptr when there is no tensor of that name.
  const SafetensorsEntry* Find(const std::string& name) const;
  bool Has(const std::string& name) const { return Find(name) != nullptr; }
  // Every tensor, by name (bytewise order).
  const std::map<std::string, SafetensorsEntry>& entries() const { return entries_; }

  // A CPU tensor viewing the mapped bytes (F32, BF16 and F16; zero-copy unless the data is not
  // aligned to its element size, which safetensors does not promise, and then a copy). The view is
  // read-only memory: an in-place op on it faults. NotFound names a missing tensor.
  Result<at::Tensor> Tensor(const std::string& name) const;

  // XXH3-64 (seed 0) over every tensor in name order: for each, its name and dtype (each followed
  // by a 0 byte), the number of dimensions, each dimension and the data size (each a u64 little-
  // endian), then all of its data bytes. So it covers every weight bit, names and shapes, and not
  // the header's formatting, its __metadata__, the tensor order or how the weights are sharded:
  // the same weights written differently hash the same. Reads every byte (about 0.1 s per 500 MB
  // from the page cache).
  uint64_t HashWeights() const;

  // Where the weights came from, for messages ("DIR/model.safetensors" or the index file).
  const std::string& source() const { return source_; }

 private:
  Status AddFile(const std::string& path);

  std::string source_;
  std::map<std::string, SafetensorsEntry> entries_;
};

}  // namespace kiv
