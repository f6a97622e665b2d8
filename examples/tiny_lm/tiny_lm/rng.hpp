#pragma once
// A small, serialisable random number generator (xoshiro256**, seeded by splitmix64). Its whole
// state is four 64-bit words, so checkpoints can store it and a resumed run draws exactly the
// numbers the uninterrupted run would have drawn.

#include <array>
#include <cmath>
#include <cstdint>
#include <string_view>

namespace tiny_lm {

/// splitmix64: turns any 64-bit value into a well-mixed one (seeding, hashing).
inline std::uint64_t splitmix64(std::uint64_t& x) {
  std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/// FNV-1a hash of a name: derives independent streams ("layer0.wq") from one seed.
inline std::uint64_t hash_name(std::string_view name) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (const char c : name) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001B3ull;
  }
  return h;
}

/// xoshiro256** (Blackman and Vigna): fast, 256-bit state, trivially serialisable.
class rng {
 public:
  using state_type = std::array<std::uint64_t, 4>;

  explicit rng(std::uint64_t seed = 0) { reseed(seed); }
  rng(std::uint64_t seed, std::string_view stream) { reseed(seed ^ hash_name(stream)); }

  void reseed(std::uint64_t seed) {
    std::uint64_t x = seed;
    for (auto& word : s_) word = splitmix64(x);
  }

  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  /// Uniform integer in [0, n); n > 0 (Lemire's multiply-shift, negligible bias at these n).
  std::uint32_t below(std::uint32_t n) {
    return static_cast<std::uint32_t>(((next() >> 32) * static_cast<std::uint64_t>(n)) >> 32);
  }
  /// Standard normal (Box-Muller; two uniforms per call, no cached value in the state).
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  [[nodiscard]] const state_type& state() const { return s_; }
  void set_state(const state_type& s) { s_ = s; }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  state_type s_{};
};

}  // namespace tiny_lm
