// A digest of a test case's kernel outputs, for refactoring: when the environment variable
// SINKMOE_OUTPUT_DIGEST names a file, each emulated product case appends "label digest" to it.
// Two runs (before and after a change that must not change any output bit) then compare with
// `diff`. The emulation is deterministic (sequential fp32 mma sums, fixed schedules), so a
// restructuring that keeps the arithmetic keeps every digest.
#pragma once

#include <bit>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

namespace sinkmoe::testing {

/// FNV-1a over the bit patterns of the values.
inline std::uint64_t digest_of(std::initializer_list<const std::vector<double>*> parts) {
  std::uint64_t h = 1469598103934665603ull;
  for (const std::vector<double>* part : parts)
    for (double v : *part) {
      const auto bits = std::bit_cast<std::uint64_t>(v);
      for (int i = 0; i < 8; ++i) {
        h ^= (bits >> (8 * i)) & 0xffu;
        h *= 1099511628211ull;
      }
    }
  return h;
}

/// Appends "label digest" to $SINKMOE_OUTPUT_DIGEST when it is set.
inline void record_digest(const std::string& label,
                          std::initializer_list<const std::vector<double>*> parts) {
  const char* path = std::getenv("SINKMOE_OUTPUT_DIGEST");
  if (path == nullptr || *path == '\0') return;
  std::ofstream(path, std::ios::app) << label << ' ' << std::hex << digest_of(parts) << '\n';
}

}  // namespace sinkmoe::testing
