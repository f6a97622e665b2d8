#pragma once
// CRC-32 (IEEE 802.3, the zlib/PNG polynomial), for checkpoint integrity and data identity.

#include <array>
#include <cstddef>
#include <cstdint>

namespace tiny_lm {

namespace detail {
inline const std::array<std::uint32_t, 256>& crc32_table() {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}
}  // namespace detail

/// Continues a CRC-32 over more bytes; start with crc = 0.
inline std::uint32_t crc32(const void* data, std::size_t size, std::uint32_t crc = 0) {
  const auto& table = detail::crc32_table();
  const auto* bytes = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (std::size_t i = 0; i < size; ++i) crc = table[(crc ^ bytes[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

}  // namespace tiny_lm
