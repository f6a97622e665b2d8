// The primitive layer (sinkmoe/cuda/arch) under its host emulation (docs/design.md section 6):
// barriers, indices, shuffles and reductions, ldmatrix and mma.sync fragment layouts against
// the PTX ISA's tables, the cp.async protocol, a tiled GEMM kernel against a reference GEMM,
// the 16-bit conversions, the emulation's own error checks, and its throughput.
//
// mma results are compared bitwise with a sequential fp32 reference: the emulation adds the
// (exact) products in k order, as documented in mma.hpp. On a GPU the same comparison holds
// only to fp32 rounding of a reordered sum, which the fp64 bound in the GEMM test also checks.
#define BOOST_TEST_MODULE arch_emulation
#include <algorithm>
#include <bit>
#include <boost/mpl/list.hpp>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <limits>
#include <random>
#include <sinkmoe/cuda/arch/emulation.hpp>
#include <string>
#include <vector>

#include "support/arch_gemm.hpp"

namespace arch = sinkmoe::arch;
using arch::bf16;
using arch::fp16;
using arch::index3;

namespace {

using half_types = boost::mpl::list<bf16, fp16>;

/// Seconds since `start`.
double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// Random values exactly representable in T (rounded once), as T.
template <class T>
std::vector<T> random_halves(std::size_t count, unsigned seed, float scale = 1.0f) {
  std::mt19937 engine(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<T> values(count);
  for (auto& v : values) v = arch::from_float<T>(dist(engine));
  return values;
}

// ---------------------------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------------------------

/// Largest finite bit pattern and the count of finite positive patterns, per type.
template <class T>
constexpr std::uint16_t max_finite_bits() {
  return std::is_same_v<T, bf16> ? 0x7f7f : 0x7bff;
}

template <class T>
bool is_nan_bits(std::uint16_t bits) {
  return std::isnan(arch::to_float(arch::from_bits<T>(bits)));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(conversions)

BOOST_AUTO_TEST_CASE_TEMPLATE(every_value_round_trips, T, half_types) {
  int nan_count = 0;
  for (std::uint32_t bits = 0; bits <= 0xffff; ++bits) {
    const auto value = arch::from_bits<T>(static_cast<std::uint16_t>(bits));
    const float wide = arch::to_float(value);
    const std::uint16_t back = arch::to_bits(arch::from_float<T>(wide));
    if (std::isnan(wide)) {
      ++nan_count;
      BOOST_TEST(back == 0x7fffu);  // canonical NaN, as cvt.rn
    } else {
      BOOST_TEST(back == bits, "bits " << std::hex << bits << " came back as " << back);
    }
  }
  // NaN: all-ones exponent, nonzero mantissa, either sign: bf16 2 * 127, fp16 2 * 1023.
  BOOST_TEST(nan_count == (std::is_same_v<T, bf16> ? 254 : 2046));
}

BOOST_AUTO_TEST_CASE_TEMPLATE(midpoints_round_to_even, T, half_types) {
  // Every pair of consecutive finite magnitudes: the midpoint (exact in float) rounds to the one
  // with an even bit pattern, and one float ulp either side rounds to the nearer one. Both signs.
  for (std::uint16_t lo = 0; lo < max_finite_bits<T>(); ++lo) {
    const std::uint16_t hi = lo + 1;
    const double lo_value = arch::to_float(arch::from_bits<T>(lo));
    const double hi_value = arch::to_float(arch::from_bits<T>(hi));
    const float mid = static_cast<float>((lo_value + hi_value) / 2);
    BOOST_REQUIRE(static_cast<double>(mid) == (lo_value + hi_value) / 2);
    const std::uint16_t even = (lo % 2 == 0) ? lo : hi;
    for (const float sign : {1.0f, -1.0f}) {
      const std::uint16_t sign_bit = sign < 0 ? 0x8000 : 0;
      const auto round = [&](float x) { return arch::to_bits(arch::from_float<T>(sign * x)); };
      BOOST_TEST(round(mid) == (even | sign_bit), "midpoint after " << std::hex << lo);
      BOOST_TEST(round(std::nextafter(mid, 0.0f)) == (lo | sign_bit));
      BOOST_TEST(round(std::nextafter(mid, std::numeric_limits<float>::infinity())) ==
                 (hi | sign_bit));
    }
  }
}

BOOST_AUTO_TEST_CASE(named_edge_cases) {
  const auto bf = [](float x) { return arch::to_bits(arch::from_float<bf16>(x)); };
  const auto hf = [](float x) { return arch::to_bits(arch::from_float<fp16>(x)); };
  const float inf = std::numeric_limits<float>::infinity();
  // bf16: 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1); 1 + 3 * 2^-8 ties up.
  BOOST_TEST(bf(1.0f + 0x1p-8f) == 0x3f80u);
  BOOST_TEST(bf(1.0f + 3 * 0x1p-8f) == 0x3f82u);
  BOOST_TEST(bf(std::numeric_limits<float>::max()) == 0x7f80u);  // rounds up to inf
  BOOST_TEST(bf(0x1.fep127f) == 0x7f7fu);                        // bf16 max, exact
  BOOST_TEST(bf(-inf) == 0xff80u);
  BOOST_TEST(bf(-0.0f) == 0x8000u);
  BOOST_TEST(bf(std::numeric_limits<float>::denorm_min()) == 0x0000u);  // ties to +0
  BOOST_TEST(bf(0x1p-133f) == 0x0001u);                                 // bf16 min subnormal
  BOOST_TEST(bf(std::nanf("")) == 0x7fffu);
  // fp16: max 65504; 65520 is halfway to 65536 (inf) and ties to even = inf.
  BOOST_TEST(hf(65504.0f) == 0x7bffu);
  BOOST_TEST(hf(65519.996f) == 0x7bffu);
  BOOST_TEST(hf(65520.0f) == 0x7c00u);
  BOOST_TEST(hf(-1e6f) == 0xfc00u);
  BOOST_TEST(hf(0x1p-14f) == 0x0400u);             // min normal
  BOOST_TEST(hf(0x1p-24f) == 0x0001u);             // min subnormal
  BOOST_TEST(hf(0x1p-25f) == 0x0000u);             // halfway to min subnormal: ties to 0
  BOOST_TEST(hf(0x1.000002p-25f) == 0x0001u);      // just above halfway
  BOOST_TEST(hf(3 * 0x1p-25f) == 0x0002u);         // 1.5 units: ties to 2
  BOOST_TEST(hf(0x1p-14f - 0x1p-25f) == 0x0400u);  // 1023.5 units: ties up to min normal
  BOOST_TEST(hf(1.0f + 0x1p-11f) == 0x3c00u);      // ties to even (1)
  BOOST_TEST(hf(1.0f + 3 * 0x1p-11f) == 0x3c02u);
  BOOST_TEST(hf(-2.0f) == 0xc000u);
  BOOST_TEST(hf(std::nanf("")) == 0x7fffu);
  BOOST_TEST(arch::to_float(arch::from_bits<fp16>(0x7c00)) == inf);
  BOOST_TEST(arch::to_float(arch::from_bits<fp16>(0x8001)) == -0x1p-24f);
}

BOOST_AUTO_TEST_CASE_TEMPLATE(pack_puts_first_element_low, T, half_types) {
  const std::uint32_t packed = arch::pack2<T>(1.0f, -2.0f);
  BOOST_TEST((packed & 0xffffu) == arch::to_bits(arch::from_float<T>(1.0f)));
  BOOST_TEST((packed >> 16) == arch::to_bits(arch::from_float<T>(-2.0f)));
  BOOST_TEST(arch::unpack<T>(packed, 0) == 1.0f);
  BOOST_TEST(arch::unpack<T>(packed, 1) == -2.0f);
  BOOST_TEST(arch::pack2(arch::from_float<T>(3.0f), arch::from_float<T>(0.5f)) ==
             arch::pack2<T>(3.0f, 0.5f));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Indices and barriers
// ---------------------------------------------------------------------------------------------

namespace {

/// What each thread reports about itself.
struct thread_report {
  index3 thread, block, block_dim, grid_dim;
  int rank, lane, warp;
};

struct report_kernel {
  void operator()(thread_report* out) const {
    const index3 b = arch::block_index(), d = arch::block_dim(), g = arch::grid_dim();
    const int block_linear = static_cast<int>(g.linear(b));
    out[block_linear * static_cast<int>(d.volume()) + arch::thread_rank()] = thread_report{
        arch::thread_index(), b, d, g, arch::thread_rank(), arch::lane_id(), arch::warp_id()};
  }
};

/// Rounds of: every thread writes its slot, barrier, every thread checks every slot, barrier.
/// A missing or broken barrier makes some thread read a stale or 0xff slot (threads run one at
/// a time in rank order between barriers).
struct barrier_rounds_kernel {
  void operator()(int rounds, int* mismatches) const {
    int* slots = arch::dynamic_smem<int>();
    const int n = static_cast<int>(arch::block_dim().volume());
    const int rank = arch::thread_rank();
    const int block = static_cast<int>(arch::grid_dim().linear(arch::block_index()));
    int bad = 0;
    for (int round = 0; round < rounds; ++round) {
      arch::store_shared(slots + rank, round * 100000 + block * 1000 + rank);
      arch::sync_block();
      for (int other = 0; other < n; ++other) {
        bad += arch::load_shared(slots + other) != round * 100000 + block * 1000 + other;
      }
      arch::sync_block();
    }
    mismatches[block * n + rank] = bad;
  }
};

/// Every thread writes its slot and reads the slot of the thread `distance` ranks on, with the
/// barrier between them only when `with_barrier`.
struct neighbour_read_kernel {
  void operator()(bool with_barrier, int distance, int* out) const {
    int* slots = arch::dynamic_smem<int>();
    const int rank = arch::thread_rank();
    const int n = static_cast<int>(arch::block_dim().volume());
    arch::store_shared(slots + rank, rank);
    if (with_barrier) arch::sync_block();
    out[rank] = arch::load_shared(slots + (rank + distance) % n);
    arch::sync_block();
  }
};

/// Threads at rank >= live return at once; the rest meet at barriers (which count live threads).
struct early_return_kernel {
  void operator()(int live, int* out) const {
    const int rank = arch::thread_rank();
    if (rank >= live) return;
    int* slots = arch::dynamic_smem<int>();
    arch::store_shared(slots + rank, rank + 1);
    arch::sync_block();
    int sum = 0;
    for (int i = 0; i < live; ++i) sum += arch::load_shared(slots + i);
    arch::sync_block();
    out[rank] = sum;
  }
};

/// sync_warp orders a lane's shared write before another lane's read.
struct warp_barrier_kernel {
  void operator()(int* out) const {
    int* slots = arch::dynamic_smem<int>();
    const int rank = arch::thread_rank(), lane = arch::lane_id();
    const int base = arch::warp_id() * 32;
    for (int round = 0; round < 3; ++round) {
      arch::store_shared(slots + rank, 10 * rank + round);
      arch::sync_warp();
      out[3 * rank + round] = arch::load_shared(slots + base + (lane + 1) % 32);
      arch::sync_warp();
    }
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(indices_and_barriers)

BOOST_AUTO_TEST_CASE(indices_follow_cuda) {
  const index3 grid(2, 3, 2), block(8, 4, 3);  // 96 threads: 3 warps
  std::vector<thread_report> reports(grid.volume() * block.volume());
  const auto stats = arch::emulated_launch(grid, block, 0, report_kernel{}, reports.data());
  BOOST_TEST(stats.blocks == grid.volume());
  BOOST_TEST(stats.threads == grid.volume() * block.volume());
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx)
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx) {
              const unsigned rank = tx + block.x * (ty + block.y * tz);
              const unsigned b = bx + grid.x * (by + grid.y * bz);
              const thread_report& r = reports[b * block.volume() + rank];
              BOOST_TEST((r.thread == index3(tx, ty, tz)));
              BOOST_TEST((r.block == index3(bx, by, bz)));
              BOOST_TEST((r.block_dim == block));
              BOOST_TEST((r.grid_dim == grid));
              BOOST_TEST(r.rank == static_cast<int>(rank));
              BOOST_TEST(r.lane == static_cast<int>(rank % 32));
              BOOST_TEST(r.warp == static_cast<int>(rank / 32));
            }
}

BOOST_AUTO_TEST_CASE(block_barrier_orders_shared_memory) {
  for (const auto& [grid, block] :
       {std::pair{index3(1), index3(128)}, std::pair{index3(2, 3), index3(32, 2, 2)},
        std::pair{index3(3), index3(96)}, std::pair{index3(1), index3(50)}}) {
    const int rounds = 5;
    std::vector<int> mismatches(grid.volume() * block.volume(), -1);
    const auto stats = arch::emulated_launch(grid, block, block.volume() * sizeof(int),
                                             barrier_rounds_kernel{}, rounds, mismatches.data());
    BOOST_TEST(std::count(mismatches.begin(), mismatches.end(), 0) ==
               static_cast<long>(mismatches.size()));
    BOOST_TEST(stats.block_barriers == 2u * rounds * grid.volume());
  }
}

BOOST_AUTO_TEST_CASE(neighbour_reads_after_a_barrier) {
  std::vector<int> out(128, -1);
  arch::emulated_launch(1, 128, 128 * sizeof(int), neighbour_read_kernel{}, true, 37, out.data());
  for (int rank = 0; rank < 128; ++rank) BOOST_TEST(out[rank] == (rank + 37) % 128);
}

BOOST_AUTO_TEST_CASE(barriers_count_live_threads) {
  std::vector<int> out(128, -1);
  arch::emulated_launch(1, 128, 128 * sizeof(int), early_return_kernel{}, 70, out.data());
  for (int i = 0; i < 70; ++i) BOOST_TEST(out[i] == 70 * 71 / 2);
  for (int i = 70; i < 128; ++i) BOOST_TEST(out[i] == -1);
}

BOOST_AUTO_TEST_CASE(warp_barrier_orders_lanes) {
  std::vector<int> out(3 * 64, -1);
  const auto stats =
      arch::emulated_launch(1, 64, 64 * sizeof(int), warp_barrier_kernel{}, out.data());
  for (int rank = 0; rank < 64; ++rank) {
    const int source = (rank / 32) * 32 + (rank % 32 + 1) % 32;
    for (int round = 0; round < 3; ++round)
      BOOST_TEST(out[3 * rank + round] == 10 * source + round);
  }
  BOOST_TEST(stats.warp_syncs == 2u * 6u);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Shuffles and reductions
// ---------------------------------------------------------------------------------------------

namespace {

constexpr int k_widths[] = {2, 4, 8, 16, 32};

/// For each width and each mask/delta/source 0..31 (idx: 0..63), every lane's result of
/// shfl_xor, shfl_down, shfl_idx, as int and as float. Layout: [op][width][param][lane].
struct shuffle_kernel {
  template <int Width>
  static void one_width(int w, int lane, int* ints, float* floats) {
    const int value = 1000 + 7 * lane;
    const float fvalue = 0.5f + static_cast<float>(lane);
    for (int p = 0; p < 64; ++p) {
      const int slot = (w * 64 + p) * 32 + lane;
      if (p < 32) {
        ints[0 * 5 * 64 * 32 + slot] = arch::shfl_xor<Width>(value, p);
        floats[0 * 5 * 64 * 32 + slot] = arch::shfl_xor<Width>(fvalue, p);
        ints[1 * 5 * 64 * 32 + slot] = arch::shfl_down<Width>(value, static_cast<unsigned>(p));
        floats[1 * 5 * 64 * 32 + slot] = arch::shfl_down<Width>(fvalue, static_cast<unsigned>(p));
      }
      ints[2 * 5 * 64 * 32 + slot] = arch::shfl_idx<Width>(value, p);
      floats[2 * 5 * 64 * 32 + slot] = arch::shfl_idx<Width>(fvalue, p);
    }
  }
  void operator()(int* ints, float* floats) const {
    const int lane = arch::lane_id();
    one_width<2>(0, lane, ints, floats);
    one_width<4>(1, lane, ints, floats);
    one_width<8>(2, lane, ints, floats);
    one_width<16>(3, lane, ints, floats);
    one_width<32>(4, lane, ints, floats);
  }
};

/// Expected source lane, written from CUDA's documentation of __shfl_*_sync with width.
int expected_source(int op, int width, int param, int lane) {
  const int segment_start = lane - lane % width;
  switch (op) {
    case 0: {  // xor: may read earlier segments; a later segment gives the own value
      const int source = lane ^ param;
      return source < segment_start + width ? source : lane;
    }
    case 1: {  // down: no wrap; the upper lanes of the segment keep their value
      const int source = lane + param;
      return source < segment_start + width ? source : lane;
    }
    default:  // idx: source modulo width inside the caller's segment
      return segment_start + param % width;
  }
}

/// Each warp reduces lane-dependent values: sums and maxima over width 32 and 4, int and float.
struct reduction_kernel {
  void operator()(float* out_float, int* out_int) const {
    const int rank = arch::thread_rank(), lane = arch::lane_id(), warp = arch::warp_id();
    const float f = static_cast<float>((lane * 37 + warp * 11) % 29) - 14.0f;  // exact sums
    const int i = (lane * 13 + warp * 5) % 23 - 11;
    out_float[4 * rank + 0] = arch::warp_reduce_sum(f);
    out_float[4 * rank + 1] = arch::warp_reduce_max(f);
    out_float[4 * rank + 2] = arch::warp_reduce_sum<4>(f);
    out_float[4 * rank + 3] = arch::warp_reduce_max<4>(lane == 5 ? -INFINITY : f);
    out_int[4 * rank + 0] = arch::warp_reduce_sum(i);
    out_int[4 * rank + 1] = arch::warp_reduce_max(i);
    out_int[4 * rank + 2] = arch::warp_reduce_sum<8>(i);
    out_int[4 * rank + 3] = arch::warp_reduce_max<16>(i);
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(shuffles)

BOOST_AUTO_TEST_CASE(xor_down_idx_match_cuda_semantics) {
  // Two warps, so that lane != rank; both must behave identically.
  const int per_warp = 3 * 5 * 64 * 32;
  std::vector<int> ints(2 * per_warp, -1);
  std::vector<float> floats(2 * per_warp, -1.0f);
  struct two_warps {
    void operator()(int* ints, float* floats) const {
      const int offset = arch::warp_id() * 3 * 5 * 64 * 32;
      shuffle_kernel{}(ints + offset, floats + offset);
    }
  };
  arch::emulated_launch(1, 64, 0, two_warps{}, ints.data(), floats.data());
  int checked = 0;
  for (int warp = 0; warp < 2; ++warp)
    for (int op = 0; op < 3; ++op)
      for (int w = 0; w < 5; ++w)
        for (int p = 0; p < (op == 2 ? 64 : 32); ++p)
          for (int lane = 0; lane < 32; ++lane) {
            const int source = expected_source(op, k_widths[w], p, lane);
            const int slot = warp * per_warp + op * 5 * 64 * 32 + (w * 64 + p) * 32 + lane;
            if (ints[slot] != 1000 + 7 * source || floats[slot] != 0.5f + source) {
              BOOST_ERROR("op " << op << " width " << k_widths[w] << " param " << p << " lane "
                                << lane << ": got " << ints[slot] << ", expected source "
                                << source);
            }
            ++checked;
          }
  BOOST_TEST(checked == 2 * (32 + 32 + 64) * 5 * 32);
}

BOOST_AUTO_TEST_CASE(reductions) {
  const int n = 128;
  std::vector<float> out_float(4 * n);
  std::vector<int> out_int(4 * n);
  arch::emulated_launch(1, n, 0, reduction_kernel{}, out_float.data(), out_int.data());
  for (int rank = 0; rank < n; ++rank) {
    const int lane = rank % 32, warp = rank / 32;
    const auto f = [&](int l) { return static_cast<float>((l * 37 + warp * 11) % 29) - 14.0f; };
    const auto i = [&](int l) { return (l * 13 + warp * 5) % 23 - 11; };
    float sum32 = 0, max32 = -INFINITY, sum4 = 0, max4 = -INFINITY;
    int isum32 = 0, imax32 = std::numeric_limits<int>::min(), isum8 = 0,
        imax16 = std::numeric_limits<int>::min();
    for (int l = 0; l < 32; ++l) {
      sum32 += f(l);
      max32 = std::max(max32, f(l));
      isum32 += i(l);
      imax32 = std::max(imax32, i(l));
      if (l / 4 == lane / 4) {
        sum4 += f(l);
        max4 = std::max(max4, l == 5 ? -INFINITY : f(l));
      }
      if (l / 8 == lane / 8) isum8 += i(l);
      if (l / 16 == lane / 16) imax16 = std::max(imax16, i(l));
    }
    BOOST_TEST(out_float[4 * rank + 0] == sum32);
    BOOST_TEST(out_float[4 * rank + 1] == max32);
    BOOST_TEST(out_float[4 * rank + 2] == sum4);
    BOOST_TEST(out_float[4 * rank + 3] == max4);
    BOOST_TEST(out_int[4 * rank + 0] == isum32);
    BOOST_TEST(out_int[4 * rank + 1] == imax32);
    BOOST_TEST(out_int[4 * rank + 2] == isum8);
    BOOST_TEST(out_int[4 * rank + 3] == imax16);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// ldmatrix
// ---------------------------------------------------------------------------------------------

namespace {

constexpr int k_tile_rows = 64, k_tile_cols = 64;  // the shared tile ldmatrix reads

/// Copies a 64x64 tile of 16-bit ids into shared memory; each lane points at a row chosen by
/// the host (row_of[lane], 8-element column block col_of[lane]); runs every ldmatrix shape.
/// out: [shape 0..5][lane][reg 0..3].
struct ldmatrix_kernel {
  void operator()(const std::uint16_t* ids, const int* row_of, const int* col_of,
                  std::uint32_t* out) const {
    auto* tile = arch::dynamic_smem<std::uint16_t>();
    const int lane = arch::lane_id();
    for (int i = lane; i < k_tile_rows * k_tile_cols; i += 32) arch::store_shared(tile + i, ids[i]);
    arch::sync_warp();
    const std::uint16_t* row = tile + row_of[lane] * k_tile_cols + 8 * col_of[lane];
    std::uint32_t r1[1], r2[2], r4[4];
    const auto store = [&](int shape, const std::uint32_t* regs, int count) {
      for (int j = 0; j < 4; ++j) out[(shape * 32 + lane) * 4 + j] = j < count ? regs[j] : 0;
    };
    arch::ldmatrix_x1(r1, row);
    store(0, r1, 1);
    arch::ldmatrix_x2(r2, row);
    store(1, r2, 2);
    arch::ldmatrix_x4(r4, row);
    store(2, r4, 4);
    arch::ldmatrix_x1_trans(r1, row);
    store(3, r1, 1);
    arch::ldmatrix_x2_trans(r2, row);
    store(4, r2, 2);
    arch::ldmatrix_x4_trans(r4, row);
    store(5, r4, 4);
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(ldmatrix)

BOOST_AUTO_TEST_CASE(fragments_follow_the_ptx_layout) {
  // id(r, c) = r * 256 + c: every element of the tile is distinct and names its position.
  std::vector<std::uint16_t> ids(k_tile_rows * k_tile_cols);
  for (int r = 0; r < k_tile_rows; ++r)
    for (int c = 0; c < k_tile_cols; ++c)
      ids[r * k_tile_cols + c] = static_cast<std::uint16_t>(r * 256 + c);
  std::mt19937 engine(7);
  std::vector<int> row_of(32), col_of(32);
  for (int lane = 0; lane < 32; ++lane) {
    row_of[lane] = static_cast<int>(engine() % k_tile_rows);
    col_of[lane] = static_cast<int>(engine() % (k_tile_cols / 8));
  }
  std::vector<std::uint32_t> out(6 * 32 * 4);
  arch::emulated_launch(1, 32, ids.size() * 2, ldmatrix_kernel{}, ids.data(), row_of.data(),
                        col_of.data(), out.data());
  // Reference: matrix j's row r is the 8 elements at the address of lane 8j + r.
  const auto element = [&](int j, int r, int c) -> std::uint32_t {
    const int lane = 8 * j + r;
    return ids[row_of[lane] * k_tile_cols + 8 * col_of[lane] + c];
  };
  const int counts[] = {1, 2, 4, 1, 2, 4};
  for (int shape = 0; shape < 6; ++shape) {
    const bool trans = shape >= 3;
    for (int lane = 0; lane < 32; ++lane) {
      for (int j = 0; j < counts[shape]; ++j) {
        const int group = lane / 4, pair = 2 * (lane % 4);
        const std::uint32_t expected =
            trans ? element(j, pair, group) | element(j, pair + 1, group) << 16
                  : element(j, group, pair) | element(j, group, pair + 1) << 16;
        BOOST_TEST(out[(shape * 32 + lane) * 4 + j] == expected,
                   "shape " << shape << " lane " << lane << " reg " << j);
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// mma.sync m16n8k16
// ---------------------------------------------------------------------------------------------

namespace {

/// Fragments built by the test itself from the PTX ISA's formulas ("Matrix Fragments for
/// mma.m16n8k16 with floating point type"), written in the ISA's element-index form:
///   A: row = groupID for a_i with i < 2 or 4 <= i < 6, else groupID + 8;
///      col = threadID_in_group * 2 + (i & 1), + 8 for i >= 4
///   B: row = threadID_in_group * 2 + (i & 1), + 8 for i >= 2; col = groupID
///   C: row = groupID for c_i with i < 2, else groupID + 8; col = threadID_in_group * 2 + (i & 1)
struct ptx_fragments {
  std::uint32_t a[32][4];
  std::uint32_t b[32][2];
  float c[32][4];
};

template <class T>
ptx_fragments make_fragments(const std::vector<T>& a, const std::vector<T>& b,
                             const std::vector<float>& c) {  // a 16x16, b 16x8 (k, n), c 16x8
  ptx_fragments f{};
  for (int lane = 0; lane < 32; ++lane) {
    const int group_id = lane >> 2, thread_in_group = lane % 4;
    std::uint16_t a_elems[8], b_elems[4];
    for (int i = 0; i < 8; ++i) {
      const int row = (i < 2 || (i >= 4 && i < 6)) ? group_id : group_id + 8;
      const int col = thread_in_group * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      a_elems[i] = arch::to_bits(a[row * 16 + col]);
    }
    for (int i = 0; i < 4; ++i) {
      const int row = thread_in_group * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      b_elems[i] = arch::to_bits(b[row * 8 + group_id]);
    }
    for (int r = 0; r < 4; ++r)
      f.a[lane][r] = a_elems[2 * r] | (std::uint32_t{a_elems[2 * r + 1]} << 16);
    for (int r = 0; r < 2; ++r)
      f.b[lane][r] = b_elems[2 * r] | (std::uint32_t{b_elems[2 * r + 1]} << 16);
    for (int i = 0; i < 4; ++i) {
      const int row = i < 2 ? group_id : group_id + 8;
      f.c[lane][i] = c[row * 8 + thread_in_group * 2 + (i & 1)];
    }
  }
  return f;
}

/// D = A B + C from per-lane fragments given in global memory.
template <class T>
struct mma_fragment_kernel {
  void operator()(const ptx_fragments* f, float* d) const {
    const int lane = arch::lane_id();
    std::uint32_t a[4], b[2];
    float c[4], out[4];
    for (int i = 0; i < 4; ++i) a[i] = f->a[lane][i];
    for (int i = 0; i < 2; ++i) b[i] = f->b[lane][i];
    for (int i = 0; i < 4; ++i) c[i] = f->c[lane][i];
    arch::mma_m16n8k16<T>(out, a, b, c);
    for (int i = 0; i < 4; ++i) d[lane * 4 + i] = out[i];
  }
};

/// D = A B + C with A (16x16 row-major), B given both as b_nk (8x16, n-major: "col-major B")
/// and b_kn (16x8, k-major), staged in shared memory and loaded with ldmatrix (x4 for A, x2
/// for B, x2.trans for the k-major B). C enters and D leaves as a row-major 16x8 tile through
/// the accumulator layout. d: [0] via b_nk, [1] via b_kn.
template <class T>
struct mma_ldmatrix_kernel {
  void operator()(const T* a, const T* b_nk, const T* b_kn, const float* c, float* d) const {
    T* smem = arch::dynamic_smem<T>();
    T* a_tile = smem;                 // 16 x 16
    T* b_nk_tile = smem + 256;        // 8 x 16
    T* b_kn_tile = smem + 256 + 128;  // 16 x 8
    const int lane = arch::lane_id();
    for (int i = lane; i < 256; i += 32) arch::store_shared(a_tile + i, a[i]);
    for (int i = lane; i < 128; i += 32) {
      arch::store_shared(b_nk_tile + i, b_nk[i]);
      arch::store_shared(b_kn_tile + i, b_kn[i]);
    }
    arch::sync_warp();
    std::uint32_t a_frag[4], b_frag[2], bt_frag[2];
    arch::ldmatrix_x4(a_frag, a_tile + (lane % 16) * 16 + (lane / 16) * 8);
    // n-major B: matrix 0 = columns k 0-7 of rows n 0-7, matrix 1 = k 8-15.
    arch::ldmatrix_x2(b_frag, b_nk_tile + (lane % 8) * 16 + ((lane / 8) % 2) * 8);
    // k-major B: matrix 0 = rows k 0-7, matrix 1 = rows k 8-15; transposed on load.
    arch::ldmatrix_x2_trans(bt_frag, b_kn_tile + (lane % 16) * 8);
    const int g = lane / 4, t = lane % 4;
    float acc[2][4];
    for (int v = 0; v < 2; ++v) {
      acc[v][0] = c[g * 8 + 2 * t];
      acc[v][1] = c[g * 8 + 2 * t + 1];
      acc[v][2] = c[(g + 8) * 8 + 2 * t];
      acc[v][3] = c[(g + 8) * 8 + 2 * t + 1];
    }
    arch::mma_m16n8k16<T>(acc[0], a_frag, b_frag);
    arch::mma_m16n8k16<T>(acc[1], a_frag, bt_frag);
    for (int v = 0; v < 2; ++v) {
      float* dv = d + v * 128;
      dv[g * 8 + 2 * t] = acc[v][0];
      dv[g * 8 + 2 * t + 1] = acc[v][1];
      dv[(g + 8) * 8 + 2 * t] = acc[v][2];
      dv[(g + 8) * 8 + 2 * t + 1] = acc[v][3];
    }
  }
};

/// Reference: c + sum_k a*b in fp32, k ascending (the emulation's documented order).
template <class T>
std::vector<float> reference_mma(const std::vector<T>& a, const std::vector<T>& b_kn,
                                 const std::vector<float>& c) {
  std::vector<float> d(128);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      float sum = c[m * 8 + n];
      for (int k = 0; k < 16; ++k)
        sum += arch::to_float(a[m * 16 + k]) * arch::to_float(b_kn[k * 8 + n]);
      d[m * 8 + n] = sum;
    }
  return d;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(mma)

BOOST_AUTO_TEST_CASE_TEMPLATE(fragments_from_the_ptx_tables, T, half_types) {
  const auto a = random_halves<T>(256, 1);
  const auto b = random_halves<T>(128, 2);  // k-major 16x8
  std::vector<float> c(128);
  std::mt19937 engine(3);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (auto& v : c) v = dist(engine);
  const ptx_fragments f = make_fragments(a, b, c);
  std::vector<float> d(128);
  const auto stats = arch::emulated_launch(1, 32, 0, mma_fragment_kernel<T>{}, &f, d.data());
  BOOST_TEST(stats.mma == 1u);
  const auto expected = reference_mma(a, b, c);
  // d is in fragment order: lane, then c0..c3; map back through the C table.
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const int row = (i < 2 ? lane >> 2 : (lane >> 2) + 8), col = (lane % 4) * 2 + (i & 1);
      BOOST_TEST(d[lane * 4 + i] == expected[row * 8 + col], "lane " << lane << " c" << i);
    }
}

BOOST_AUTO_TEST_CASE_TEMPLATE(ldmatrix_fed_product_matches_gemm, T, half_types) {
  const auto a = random_halves<T>(256, 11);
  const auto b_kn = random_halves<T>(128, 12);
  std::vector<T> b_nk(128);
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 8; ++n) b_nk[n * 16 + k] = b_kn[k * 8 + n];
  std::vector<float> c(128);
  for (int i = 0; i < 128; ++i) c[i] = 0.25f * static_cast<float>(i % 9) - 1.0f;
  std::vector<float> d(256, std::nanf(""));
  arch::emulated_launch(1, 32, (256 + 256) * sizeof(T), mma_ldmatrix_kernel<T>{}, a.data(),
                        b_nk.data(), b_kn.data(), c.data(), d.data());
  const auto expected = reference_mma(a, b_kn, c);
  for (int i = 0; i < 128; ++i) {
    BOOST_TEST(d[i] == expected[i], "n-major B, element " << i);
    BOOST_TEST(d[128 + i] == expected[i], "k-major B (.trans), element " << i);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// cp.async and shared memory
// ---------------------------------------------------------------------------------------------

namespace {

/// Lane i copies 16 bytes (4 ints) to slot i of each of three groups; records what its slot
/// holds at each step. out: [step][lane][4].
struct cp_async_kernel {
  void operator()(const int* src, int* out) const {
    int* smem = arch::dynamic_smem<int>();
    const int lane = arch::lane_id();
    // Plain reads on purpose: they bypass the in-flight check (which would reject steps 0 and
    // 2) to show when the emulated copies land.
    const auto record = [&](int step, const int* slot) {
      for (int e = 0; e < 4; ++e) out[(step * 32 + lane) * 4 + e] = slot[e];
    };
    int* g0 = smem + 4 * lane;
    int* g1 = smem + 128 + 4 * lane;
    int* g2 = smem + 256 + 4 * lane;
    arch::cp_async(g0, src + 4 * lane);
    arch::cp_async_commit_group();
    arch::cp_async_zfill(g1, src + 128 + 4 * lane, lane % 2 == 0);  // odd lanes: zeros
    arch::cp_async_commit_group();
    arch::cp_async(g2, src + 256 + 4 * lane);
    arch::cp_async_commit_group();
    record(0, g0);  // nothing waited for yet: still the 0xff fill
    arch::cp_async_wait_group<2>();
    record(1, g0);  // group 0 landed
    record(2, g1);  // group 1 not yet
    arch::cp_async_wait_group<0>();
    record(3, g1);
    record(4, g2);
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(cp_async_and_smem)

BOOST_AUTO_TEST_CASE(copies_land_at_their_wait) {
  std::vector<int> src(384);
  for (int i = 0; i < 384; ++i) src[i] = 1000 + i;
  std::vector<int> out(5 * 32 * 4);
  arch::emulated_launch(1, 32, 384 * sizeof(int), cp_async_kernel{}, src.data(), out.data());
  for (int lane = 0; lane < 32; ++lane)
    for (int e = 0; e < 4; ++e) {
      const auto at = [&](int step) { return out[(step * 32 + lane) * 4 + e]; };
      BOOST_TEST(at(0) == -1);  // 0xffffffff
      BOOST_TEST(at(1) == 1000 + 4 * lane + e);
      BOOST_TEST(at(2) == -1);
      BOOST_TEST(at(3) == (lane % 2 == 0 ? 1000 + 128 + 4 * lane + e : 0));
      BOOST_TEST(at(4) == 1000 + 256 + 4 * lane + e);
    }
}

BOOST_AUTO_TEST_CASE(shared_memory_starts_as_nan) {
  // Plain reads (load_shared rejects reads of bytes nobody wrote): the fill is what a kernel
  // that bypasses the layer would see.
  struct read_fill {
    void operator()(float* out) const {
      out[arch::thread_rank()] = arch::dynamic_smem<float>()[arch::thread_rank()];
      out[64 + arch::thread_rank()] =
          arch::to_float(arch::dynamic_smem<bf16>()[arch::thread_rank()]);
    }
  };
  std::vector<float> out(128, 0.0f);
  arch::emulated_launch(1, 64, 256, read_fill{}, out.data());
  BOOST_TEST(std::all_of(out.begin(), out.end(), [](float v) { return std::isnan(v); }));
}

BOOST_AUTO_TEST_CASE(fiber_stack_size_is_an_option) {
  // 96 KiB of locals per thread: beyond the default 64 KiB stack, fine with 256 KiB.
  struct big_locals {
    void operator()(int* out) const {
      volatile unsigned char scratch[96 * 1024];
      for (std::size_t i = 0; i < sizeof(scratch); i += 4096)
        scratch[i] = static_cast<unsigned char>(i / 4096);
      arch::sync_block();
      int sum = 0;
      for (std::size_t i = 0; i < sizeof(scratch); i += 4096) sum += scratch[i];
      out[arch::thread_rank()] = sum;
    }
  };
  std::vector<int> out(64, -1);
  const arch::emulator big_stacks{.stack_bytes = 256 * 1024};
  big_stacks.launch(1, 64, 0, big_locals{}, out.data());
  BOOST_TEST(std::count(out.begin(), out.end(), 23 * 24 / 2) == 64);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// The tiled GEMM kernel (test/support/arch_gemm.hpp)
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(tiled_gemm)

BOOST_AUTO_TEST_CASE_TEMPLATE(matches_reference_gemm, T, half_types) {
  using kernel = sinkmoe::testing::tiled_gemm_kernel<T>;
  for (const auto& [m, n, k] : {std::tuple{64, 64, 64}, std::tuple{128, 192, 96}}) {
    const auto a = random_halves<T>(static_cast<std::size_t>(m) * k, 21 + m);
    const auto b = random_halves<T>(static_cast<std::size_t>(k) * n, 22 + n);
    std::vector<float> c(static_cast<std::size_t>(m) * n, std::nanf(""));
    const auto start = std::chrono::steady_clock::now();
    const auto stats =
        arch::emulated_launch(index3(n / 64, m / 64), kernel::k_threads, kernel::smem_bytes,
                              kernel{}, a.data(), b.data(), c.data(), m, n, k);
    const double elapsed = seconds_since(start);
    BOOST_TEST(stats.mma == static_cast<std::uint64_t>(m / 16) * (n / 8) * (k / 16));
    int bitwise_mismatches = 0;
    double worst_ratio = 0;
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        float sequential = 0;
        double exact = 0, magnitude = 0;
        for (int p = 0; p < k; ++p) {
          const float x = arch::to_float(a[i * k + p]), y = arch::to_float(b[p * n + j]);
          sequential += x * y;
          exact += static_cast<double>(x) * y;
          magnitude += std::abs(static_cast<double>(x) * y);
        }
        const float got = c[static_cast<std::size_t>(i) * n + j];
        bitwise_mismatches += got != sequential;
        // Any fp32 summation order is within k * eps * sum |x y| of the exact sum.
        const double bound = k * std::numeric_limits<float>::epsilon() * magnitude;
        worst_ratio = std::max(worst_ratio, std::abs(got - exact) / std::max(bound, 1e-30));
      }
    BOOST_TEST(bitwise_mismatches == 0);
    BOOST_TEST(worst_ratio <= 1.0);
    BOOST_TEST_MESSAGE("tiled_gemm "
                       << m << "x" << n << "x" << k << ": " << stats.blocks << " blocks, "
                       << stats.mma << " mma, " << stats.warp_collectives << " warp collectives, "
                       << stats.block_barriers << " block barriers in " << elapsed << " s");
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// What the emulation rejects
// ---------------------------------------------------------------------------------------------

namespace {

/// Checks that the launch throws emulation_error whose message contains `fragment`.
template <class Launch>
void expect_emulation_error(Launch&& launch, const std::string& fragment) {
  try {
    launch();
    BOOST_ERROR("no emulation_error; expected one mentioning '" << fragment << "'");
  } catch (const arch::emulation_error& e) {
    BOOST_TEST(std::string(e.what()).find(fragment) != std::string::npos, "message: " << e.what());
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(errors)

BOOST_AUTO_TEST_CASE(deadlock_between_block_and_warp_barriers) {
  struct kernel {
    void operator()() const {
      if (arch::lane_id() < 16) {
        (void)arch::shfl_xor(1, 1);
      } else {
        arch::sync_block();
      }
    }
  };
  expect_emulation_error([] { arch::emulated_launch(1, 32, 0, kernel{}); }, "deadlock");
}

BOOST_AUTO_TEST_CASE(divergent_collectives) {
  struct kernel {
    void operator()() const {
      if (arch::lane_id() < 16) {
        (void)arch::shfl_xor(1, 1);
      } else {
        (void)arch::shfl_down(1, 1u);
      }
    }
  };
  expect_emulation_error([] { arch::emulated_launch(1, 64, 0, kernel{}); }, "divergent");
}

BOOST_AUTO_TEST_CASE(collective_in_partial_warp) {
  struct kernel {
    void operator()() const { (void)arch::warp_reduce_sum(1); }
  };
  expect_emulation_error([] { arch::emulated_launch(1, 48, 0, kernel{}); }, "live lanes");
}

BOOST_AUTO_TEST_CASE(lane_returns_during_collective) {
  struct kernel {
    void operator()() const {
      if (arch::lane_id() == 31) return;
      (void)arch::shfl_idx(1, 0);
    }
  };
  expect_emulation_error([] { arch::emulated_launch(1, 32, 0, kernel{}); }, "returned");
}

BOOST_AUTO_TEST_CASE(ldmatrix_outside_shared_memory) {
  struct kernel {
    void operator()(const std::uint16_t* global) const {
      std::uint32_t r[1];
      arch::ldmatrix_x1(r, global);
    }
  };
  alignas(16) static std::uint16_t global[64] = {};
  expect_emulation_error([] { arch::emulated_launch(1, 32, 256, kernel{}, global); },
                         "outside the dynamic shared memory");
}

BOOST_AUTO_TEST_CASE(ldmatrix_misaligned_row) {
  struct kernel {
    void operator()() const {
      std::uint32_t r[4];
      arch::ldmatrix_x4(r, arch::dynamic_smem<std::uint16_t>() + 8 * arch::lane_id() +
                               (arch::lane_id() == 20 ? 1 : 0));
    }
  };
  expect_emulation_error([] { arch::emulated_launch(1, 32, 1024, kernel{}); }, "aligned");
}

BOOST_AUTO_TEST_CASE(cp_async_to_global_destination) {
  struct kernel {
    void operator()(int* global) const { arch::cp_async(global, global + 4); }
  };
  alignas(16) static int global[8] = {};
  expect_emulation_error([] { arch::emulated_launch(1, 1, 64, kernel{}, global); },
                         "cp_async destination");
}

BOOST_AUTO_TEST_CASE(invalid_launches) {
  struct kernel {
    void operator()() const {}
  };
  expect_emulation_error([] { arch::emulated_launch(1, 1025, 0, kernel{}); }, "invalid block");
  expect_emulation_error([] { arch::emulated_launch(index3(1, 0), 32, 0, kernel{}); },
                         "invalid grid");
  expect_emulation_error([] { arch::emulated_launch(1, 32, 300 * 1024, kernel{}); },
                         "shared memory");
}

BOOST_AUTO_TEST_CASE(kernel_exception_propagates_and_other_threads_unwind) {
  struct kernel {
    void operator()(int* destroyed) const {
      struct counter {
        int* n;
        ~counter() { ++*n; }
      } guard{destroyed};
      if (arch::thread_rank() == 40) throw std::runtime_error("thread 40 failed");
      arch::sync_block();
    }
  };
  int destroyed = 0;
  BOOST_CHECK_THROW(arch::emulated_launch(1, 64, 0, kernel{}, &destroyed), std::runtime_error);
  // Threads 0..39 wait at the barrier and are unwound; 40 unwinds by its exception; 41..63
  // never started (the scheduler stops at the first failure).
  BOOST_TEST(destroyed == 41);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// The sanitizer: races, cp.async visibility, uninitialised reads, global checks, schedules,
// mutations (detail/memory_checks.hpp)
// ---------------------------------------------------------------------------------------------

namespace {

/// Warp 1 reads what warp 0 wrote, with a sync_block between them or not.
struct cross_warp_kernel {
  void operator()(bool with_barrier, int* out) const {
    int* slots = arch::dynamic_smem<int>();
    const int rank = arch::thread_rank();
    if (arch::warp_id() == 0) arch::store_shared(slots + rank, 7 * rank);
    if (with_barrier) arch::sync_block();
    if (arch::warp_id() == 1) out[rank] = arch::load_shared(slots + rank - 32);
    arch::sync_block();
  }
};

/// Lane l reads lane l - 1's slot, with a sync_warp between them or not.
struct lane_neighbour_kernel {
  void operator()(bool with_sync, int* out) const {
    int* slots = arch::dynamic_smem<int>();
    const int lane = arch::lane_id();
    arch::store_shared(slots + lane, lane);
    if (with_sync) arch::sync_warp();
    out[lane] = lane == 0 ? 0 : arch::load_shared(slots + lane - 1);
  }
};

/// Warp 0 reads the slots of warp 1, which warp 1 then overwrites, without a barrier between
/// the reads and the writes: a write after read in reverse order (thread 0 completes the barrier
/// and reads first), a read after write in rank order (thread 63 completes it and writes first).
struct overwrite_read_slot_kernel {
  void operator()(int* out) const {
    int* slots = arch::dynamic_smem<int>();
    const int rank = arch::thread_rank();
    arch::store_shared(slots + rank, rank);
    arch::sync_block();
    if (arch::warp_id() == 0) out[rank] = arch::load_shared(slots + rank + 32);
    if (arch::warp_id() == 1) arch::store_shared(slots + rank, -rank);
  }
};

/// Warp `writer` fills a 16 x 8 tile of 16-bit values, warp `reader` ldmatrix-es it, without a
/// barrier between.
struct ldmatrix_after_store_kernel {
  void operator()(int writer, int reader, std::uint32_t* out) const {
    auto* tile = arch::dynamic_smem<std::uint16_t>();
    const int lane = arch::lane_id(), warp = arch::warp_id();
    if (warp == writer)
      for (int i = lane; i < 128; i += 32)
        arch::store_shared(tile + i, static_cast<std::uint16_t>(i));
    if (warp == reader) {
      std::uint32_t r[2];
      arch::ldmatrix_x2(r, tile + (lane % 16) * 8);
      out[2 * lane] = r[0];
      out[2 * lane + 1] = r[1];
    }
  }
};

/// Thread 0 copies 16 bytes with cp.async; `reader` reads them at the given step:
/// 0 before the wait, 1 after the wait (no barrier), 2 after the wait and a barrier.
struct cp_async_reader_kernel {
  void operator()(const int* src, int reader, int step, int* out) const {
    int* smem = arch::dynamic_smem<int>();
    const int rank = arch::thread_rank();
    if (rank == 0) {
      arch::cp_async(smem, src);
      arch::cp_async_commit_group();
    }
    if (step == 0 && rank == reader) out[0] = arch::load_shared(smem);
    if (rank == 0) arch::cp_async_wait_group<0>();
    if (step == 1 && rank == reader) out[0] = arch::load_shared(smem);
    arch::sync_block();
    if (step == 2 && rank == reader) out[0] = arch::load_shared(smem);
  }
};

/// Each thread takes a ticket from a global counter (read, then increment, without a barrier):
/// a read after another thread's store, which the global race detector reports.
struct ticket_kernel {
  void operator()(int* counter, int* out) const {
    const int ticket = arch::load_global(counter);
    arch::store_global(counter, ticket + 1);
    arch::store_global(out + arch::thread_rank(), ticket);
  }
};

/// Every thread takes a ticket from a counter it reads and bumps by a plain pointer (bypassing
/// the primitive layer, so no race detector sees it) and stores the ticket: what each thread
/// stores depends on the order the threads run in.
struct plain_ticket_kernel {
  void operator()(int* counter, int* out) const {
    arch::store_global(out + arch::thread_rank(), (*counter)++);
  }
};

/// One 4-byte store at an element offset of a 16-bit buffer.
struct packed_store_kernel {
  void operator()(std::uint16_t* buffer, int element) const {
    if (arch::thread_rank() == 0)
      arch::store_global(reinterpret_cast<std::uint32_t*>(buffer + element), 0x12345678u);
  }
};

/// Thread r stores out[r + offset] = in[r].
struct shifted_copy_kernel {
  void operator()(const float* in, float* out, int offset) const {
    const int r = arch::thread_rank();
    arch::store_global(out + r + offset, arch::load_global(in + r));
  }
};

/// Runs the tiled GEMM (support/arch_gemm.hpp) on a 64 x 64 x 128 problem with `em`; returns C.
template <class T>
std::vector<float> run_gemm(const arch::emulator& em, arch::emulation_stats* stats = nullptr) {
  const int m = 64, n = 64, k = 128;
  const auto a = random_halves<T>(std::size_t(m) * k, 11);
  const auto b = random_halves<T>(std::size_t(k) * n, 12);
  std::vector<float> c(std::size_t(m) * n, -1.0f);
  using kernel = sinkmoe::testing::tiled_gemm_kernel<T>;
  const auto s = em.launch(index3(n / 64, m / 64), kernel::k_threads, kernel::smem_bytes, kernel{},
                           a.data(), b.data(), c.data(), m, n, k);
  if (stats != nullptr) *stats = s;
  return c;
}

/// The message of the emulation_error `launch` throws ("" if none).
template <class Launch>
std::string emulation_message(Launch&& launch) {
  try {
    launch();
  } catch (const arch::emulation_error& e) {
    return e.what();
  }
  return "";
}

bool contains(const std::string& text, const std::string& fragment) {
  return text.find(fragment) != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(sanitizer)

BOOST_AUTO_TEST_CASE(cross_warp_read_needs_a_block_barrier) {
  std::vector<int> out(64, -1);
  arch::emulated_launch(1, 64, 256, cross_warp_kernel{}, true, out.data());
  for (int r = 32; r < 64; ++r) BOOST_TEST(out[r] == 7 * (r - 32));
  const std::string m = emulation_message(
      [&] { arch::emulated_launch(1, 64, 256, cross_warp_kernel{}, false, out.data()); });
  // Both threads, both lines and the byte are named.
  BOOST_TEST(contains(m, "shared-memory race"), m);
  BOOST_TEST(contains(m, "written by thread 0 (warp 0 lane 0)"), m);
  BOOST_TEST(contains(m, "read by thread 32 (warp 1 lane 0)"), m);
  BOOST_TEST(contains(m, "at byte offset 0"), m);
  BOOST_TEST(contains(m, "test_arch_emulation.cpp:"), m);
  BOOST_TEST(contains(m, "cross_warp_kernel"), m);
  BOOST_TEST(contains(m, "no sync_block between (different warps)"), m);
}

BOOST_AUTO_TEST_CASE(lanes_of_a_warp_need_a_sync_warp) {
  std::vector<int> out(32, -1);
  arch::emulated_launch(1, 32, 128, lane_neighbour_kernel{}, true, out.data());
  for (int l = 1; l < 32; ++l) BOOST_TEST(out[l] == l - 1);
  const std::string m = emulation_message(
      [&] { arch::emulated_launch(1, 32, 128, lane_neighbour_kernel{}, false, out.data()); });
  BOOST_TEST(contains(m, "no sync_warp or sync_block between"), m);
}

BOOST_AUTO_TEST_CASE(write_after_read_is_a_race) {
  std::vector<int> out(64, -1);
  // Reverse order: warp 0 reads slots 32..63 before warp 1 overwrites them (rank order hits the
  // read after the write instead; both are races).
  const arch::emulator reverse{.schedules = {{arch::thread_order::reverse}}};
  const std::string m = emulation_message(
      [&] { reverse.launch(1, 64, 256, overwrite_read_slot_kernel{}, out.data()); });
  BOOST_TEST(contains(m, "shared-memory race"), m);
  BOOST_TEST(contains(m, "read by thread"), m);
  BOOST_TEST(contains(m, ", then written by thread"), m);
  BOOST_TEST(!emulation_message([&] {
                arch::emulated_launch(1, 64, 256, overwrite_read_slot_kernel{}, out.data());
              }).empty());
}

BOOST_AUTO_TEST_CASE(ldmatrix_is_ordered_within_its_warp_only) {
  std::vector<std::uint32_t> out(64, 0);
  arch::emulated_launch(1, 64, 256, ldmatrix_after_store_kernel{}, 0, 0, out.data());
  BOOST_TEST(out[0] == (0u | (1u << 16)));  // row 0, columns 0 and 1
  const std::string m = emulation_message(
      [&] { arch::emulated_launch(1, 64, 256, ldmatrix_after_store_kernel{}, 0, 1, out.data()); });
  BOOST_TEST(contains(m, "read by an ldmatrix row of thread 32"), m);
}

BOOST_AUTO_TEST_CASE(unwritten_shared_bytes_are_not_read) {
  struct kernel {
    void operator()(float* out) const {
      float* smem = arch::dynamic_smem<float>();
      arch::store_shared(smem + arch::thread_rank(), 1.0f);
      arch::sync_block();
      out[arch::thread_rank()] = arch::load_shared(smem + arch::thread_rank() + 1);
    }
  };
  std::vector<float> out(32);
  const std::string m =
      emulation_message([&] { arch::emulated_launch(1, 32, 256, kernel{}, out.data()); });
  BOOST_TEST(contains(m, "thread 31 (warp 0 lane 31) reads shared byte 128"), m);
  BOOST_TEST(contains(m, "which no thread of this block has written"), m);
}

BOOST_AUTO_TEST_CASE(cp_async_destinations_are_visible_after_wait_and_barrier) {
  alignas(16) static const int src[4] = {11, 12, 13, 14};
  int out = -1;
  const auto run = [&](int reader, int step) {
    return emulation_message([&] {
      arch::emulated_launch(1, 64, 64, cp_async_reader_kernel{}, src, reader, step, &out);
    });
  };
  BOOST_TEST(contains(run(0, 0), "in flight"), run(0, 0));  // its own copy, before the wait
  // Another thread before the issuer's wait: in flight, unwritten or a race, by thread order.
  BOOST_TEST(!run(40, 0).empty());
  BOOST_TEST(run(0, 1).empty(), run(0, 1));  // the issuer after its wait
  BOOST_TEST(out == 11);
  const std::string m = run(40, 1);  // another thread after the wait, before the barrier
  BOOST_TEST(contains(m, "written by a cp.async of thread 0"), m);
  BOOST_TEST(contains(m, "read by thread 40"), m);
  out = -1;
  BOOST_TEST(run(40, 2).empty(), run(40, 2));
  BOOST_TEST(out == 11);
}

BOOST_AUTO_TEST_CASE(global_memory_passed_between_threads_needs_a_barrier) {
  int counter = 0;
  std::vector<int> out(64, -1);
  const std::string m = emulation_message(
      [&] { arch::emulated_launch(1, 64, 0, ticket_kernel{}, &counter, out.data()); });
  BOOST_TEST(contains(m, "global-memory race"), m);
  BOOST_TEST(contains(m, "written by thread 0 (warp 0 lane 0)"), m);
  BOOST_TEST(contains(m, "read by thread 1 (warp 0 lane 1)"), m);
}

BOOST_AUTO_TEST_CASE(thread_order_dependent_results_are_reported) {
  int counter = 0;
  std::vector<int> out(64, -1);
  const std::string m = emulation_message(
      [&] { arch::emulated_launch(1, 64, 0, plain_ticket_kernel{}, &counter, out.data()); });
  BOOST_TEST(contains(m, "schedule-dependent result"), m);
  BOOST_TEST(contains(m, "forward and reverse thread orders"), m);
  // One schedule alone runs it (that is all a single order can say).
  counter = 0;
  const arch::emulator one{.schedules = {{arch::thread_order::forward}}};
  one.launch(1, 64, 0, plain_ticket_kernel{}, &counter, out.data());
  BOOST_TEST(out[63] == 63);
}

BOOST_AUTO_TEST_CASE(every_schedule_gives_the_gemm_bitwise) {
  const auto expected = run_gemm<bf16>(arch::emulator{});
  for (const arch::schedule s : {arch::schedule{arch::thread_order::rotated, 5},
                                 arch::schedule{arch::thread_order::random, 9}}) {
    const arch::emulator em{.schedules = {arch::schedule{}, s}};
    arch::emulation_stats stats;
    BOOST_TEST((run_gemm<bf16>(em, &stats) == expected));
    BOOST_TEST(stats.schedules == 2u);
  }
}

BOOST_AUTO_TEST_CASE(misaligned_global_vector_access) {
  alignas(16) std::uint16_t buffer[8] = {};
  arch::emulated_launch(1, 32, 0, packed_store_kernel{}, buffer, 2);
  BOOST_TEST(buffer[2] == 0x5678);
  const std::string m =
      emulation_message([&] { arch::emulated_launch(1, 32, 0, packed_store_kernel{}, buffer, 1); });
  BOOST_TEST(contains(m, "4-byte global store"), m);
  BOOST_TEST(contains(m, "is not 4-byte aligned"), m);
}

BOOST_AUTO_TEST_CASE(global_bounds_against_registered_tensors) {
  std::vector<float> in(64, 1.0f), out(64, 0.0f), beyond(8, 0.0f);
  arch::emulator em;
  em.globals = {arch::range_of_bytes("in", in.data(), in.size() * 4, false),
                arch::range_of_bytes("out", out.data(), out.size() * 4, true)};
  em.launch(1, 64, 0, shifted_copy_kernel{}, in.data(), out.data(), 0);
  BOOST_TEST(out[63] == 1.0f);
  std::string m = emulation_message(
      [&] { em.launch(1, 64, 0, shifted_copy_kernel{}, in.data(), out.data(), 1); });
  BOOST_TEST(contains(m, "outside every tensor of the launch: 4 bytes past the end of out"), m);
  BOOST_TEST(contains(m, "thread 63"), m);
  m = emulation_message(
      [&] { em.launch(1, 64, 0, shifted_copy_kernel{}, in.data(), in.data(), 0); });
  BOOST_TEST(contains(m, "into in (byte offset 0), which the launch only reads"), m);
}

BOOST_AUTO_TEST_CASE(mutations_of_the_gemm_pipeline_are_caught) {
  arch::emulation_stats stats;
  const auto expected = run_gemm<bf16>(arch::emulator{}, &stats);
  // The census: the GEMM's two sync_block sites and its wait_group site, with their counts
  // (4 k-tiles, one block).
  std::vector<arch::site_use> barriers, waits;
  for (const arch::site_use& u : stats.sites) {
    if (u.primitive == "sync_block") barriers.push_back(u);
    if (u.primitive == "cp_async_wait_group") waits.push_back(u);
  }
  BOOST_TEST_REQUIRE(barriers.size() == 2u);
  BOOST_TEST_REQUIRE(waits.size() == 1u);
  for (const arch::site_use& u : barriers) BOOST_TEST(u.count == 4u * 128u);
  const auto mutant = [](arch::mutation::kind what, const arch::site_use& u) {
    return arch::mutation{what, u.where.file_name(), u.where.line()};
  };
  for (const arch::site_use& u : barriers) {
    const arch::emulator em{.mutations = {mutant(arch::mutation::kind::skip_sync_block, u)}};
    const std::string m = emulation_message([&] { run_gemm<bf16>(em); });
    BOOST_TEST(!m.empty(), "deleting " << arch::describe(u.where) << " went unnoticed");
    BOOST_TEST_MESSAGE("sync_block at " << arch::describe(u.where) << " deleted: " << m);
  }
  const arch::emulator fewer{.mutations = {mutant(arch::mutation::kind::retire_fewer, waits[0])}};
  const std::string m = emulation_message([&] { run_gemm<bf16>(fewer); });
  BOOST_TEST(contains(m, "in flight"), m);
  // A scoped mutation reaches emulators constructed inside it.
  {
    arch::scoped_emulation scope({mutant(arch::mutation::kind::skip_sync_block, barriers[1])});
    BOOST_TEST(!emulation_message([&] { run_gemm<bf16>(arch::emulator{}); }).empty());
  }
  BOOST_TEST((run_gemm<bf16>(arch::emulator{}) == expected));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Throughput of the emulation (reported; the values are asserted so the test can fail)
// ---------------------------------------------------------------------------------------------

namespace {

struct barrier_loop_kernel {
  void operator()(int iterations, int* out) const {
    int* slot = arch::dynamic_smem<int>();
    int sum = 0;
    for (int i = 0; i < iterations; ++i) {
      if (arch::thread_rank() == i % 128) arch::store_shared(slot, i);
      arch::sync_block();
      sum += arch::load_shared(slot);
      arch::sync_block();
    }
    out[arch::thread_rank()] = sum;
  }
};

struct shuffle_loop_kernel {
  void operator()(int iterations, int* out) const {
    int value = arch::lane_id();
    for (int i = 0; i < iterations; ++i) value = arch::shfl_xor(value, 1 + i % 31);
    out[arch::thread_rank()] = value;
  }
};

template <class T>
struct mma_loop_kernel {
  void operator()(int iterations, float* out) const {
    // Lane 0's a[0] and b[0] low halves are A[0][0] and B[0][0]: A = B = e_00.
    const std::uint32_t one = arch::lane_id() == 0 ? arch::pack2<T>(1.0f, 0.0f) : 0u;
    const std::uint32_t a[4] = {one, 0, 0, 0};
    const std::uint32_t b[2] = {one, 0};
    float acc[4] = {};
    for (int i = 0; i < iterations; ++i) arch::mma_m16n8k16<T>(acc, a, b);
    for (int e = 0; e < 4; ++e) out[arch::thread_rank() * 4 + e] = acc[e];
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(throughput)

/// Wall and process CPU seconds of one call (CPU time is the stabler figure on a shared machine).
struct timing {
  double wall, cpu;
};

template <class Launch>
arch::emulation_stats timed(timing& t, Launch&& launch) {
  const auto wall_start = std::chrono::steady_clock::now();
  const std::clock_t cpu_start = std::clock();
  const arch::emulation_stats stats = launch();
  t.cpu = static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC;
  t.wall = seconds_since(wall_start);
  return stats;
}

void report(const char* what, std::uint64_t count, timing t) {
  BOOST_TEST_MESSAGE(what << ": " << count / t.cpu << " per CPU second (" << 1e6 * t.cpu / count
                          << " us CPU, " << 1e6 * t.wall / count << " us wall each)");
}

BOOST_AUTO_TEST_CASE(barriers_shuffles_and_mma_per_second) {
  const int iterations = 2000;
  std::vector<int> out(128);
  timing t{};
  auto stats = timed(t, [&] {
    return arch::emulated_launch(1, 128, 4, barrier_loop_kernel{}, iterations, out.data());
  });
  const int expected_sum = iterations * (iterations - 1) / 2;
  BOOST_TEST(std::count(out.begin(), out.end(), expected_sum) == 128);
  BOOST_TEST(stats.block_barriers == 2u * iterations);
  report("sync_block, 128 threads", stats.block_barriers, t);

  stats = timed(t, [&] {
    return arch::emulated_launch(1, 128, 0, shuffle_loop_kernel{}, iterations, out.data());
  });
  for (int rank = 0; rank < 128; ++rank) {
    int lane = rank % 32;
    for (int i = 0; i < iterations; ++i) lane ^= 1 + i % 31;  // value follows the xor path
    BOOST_TEST(out[rank] == lane);
  }
  BOOST_TEST(stats.warp_collectives == 4u * iterations);
  report("shfl_xor, per warp (4 warps)", stats.warp_collectives, t);

  std::vector<float> acc(128 * 4);
  stats = timed(t, [&] {
    return arch::emulated_launch(1, 128, 0, mma_loop_kernel<bf16>{}, iterations, acc.data());
  });
  // D[0][0] (lane 0's c0 in each warp) grows by 1 per mma; everything else stays 0.
  BOOST_TEST(acc[0] == static_cast<float>(iterations));
  BOOST_TEST(std::count(acc.begin(), acc.end(), 0.0f) == static_cast<long>(acc.size()) - 4);
  BOOST_TEST(stats.mma == 4u * iterations);
  report("mma_m16n8k16<bf16>, per warp (4 warps)", stats.mma, t);
}

BOOST_AUTO_TEST_SUITE_END()
