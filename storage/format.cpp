#include "storage/format.h"

#include <xxhash.h>

namespace kiv::format {

uint64_t Checksum(const void* data, size_t n, uint64_t offset) {
  return XXH3_64bits_withSeed(data, n, offset);
}

}  // namespace kiv::format
