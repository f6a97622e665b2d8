#pragma once
// Launch geometry shared by both implementations of the primitive layer: a three-component
// index (grid and block sizes, thread and block coordinates) and the warp constants. No
// backend needed; host code that launches kernels uses it too.

#include <cstdint>
#include <sinkmoe/core/config.hpp>

namespace sinkmoe::arch {

/// Threads per warp. Warps are formed from the linear thread rank x + y*Dx + z*Dx*Dy, as on
/// the hardware.
inline constexpr int k_warp_size = 32;

/// Member mask of a full warp (every collective in this layer involves all 32 lanes).
inline constexpr std::uint32_t k_full_warp_mask = 0xffffffffu;

/// A grid size, block size, or thread/block coordinate; unspecified components are 1 (sizes)
/// as with CUDA's dim3. Converts implicitly from one to three integers.
struct index3 {
  unsigned x = 1;
  unsigned y = 1;
  unsigned z = 1;

  /// index3{n} is {n, 1, 1}.
  SINKMOE_HD constexpr index3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1)
      : x(x_), y(y_), z(z_) {}

  /// x * y * z: threads in a block or blocks in a grid.
  SINKMOE_HD constexpr unsigned volume() const { return x * y * z; }

  /// Linear rank of coordinate c inside a box of this size, x fastest.
  SINKMOE_HD constexpr unsigned linear(index3 c) const { return c.x + x * (c.y + y * c.z); }

  friend SINKMOE_HD constexpr bool operator==(index3 a, index3 b) {
    return a.x == b.x && a.y == b.y && a.z == b.z;
  }
};

}  // namespace sinkmoe::arch
