// The fused forward kernel (include/sinkmoe/cuda/forward_kernel.hpp) run through the host
// emulation of the primitive layer (docs/design.md section 6) and compared with the CPU backend in
// fp64 under FlashAttention's tolerance rule (support/fused_forward_check.hpp says exactly how).
//
// This unit: the policy product for sink::none (sink::learned and sink::fixed have their own
// units, test_fused_forward_emulated_{learned,fixed}.cpp, to bound compile time), head dim 128
// and fp16, variable-length batches, soft-cap, a custom mask whose interior tiles are partial,
// the tiles the kernel skips, and the arguments this path rejects.
#define BOOST_TEST_MODULE fused_forward_emulated
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "support/fused_forward_check.hpp"
#include "support/test_masks.hpp"
#include "support/throws_naming.hpp"

namespace fc = sinkmoe::testing::fused_check;
namespace arch = sinkmoe::arch;
namespace gate = sinkmoe::gate;
namespace mask = sinkmoe::mask;
namespace route = sinkmoe::route;
namespace sink = sinkmoe::sink;
namespace score = sinkmoe::score;
using arch::bf16;
using arch::fp16;
using sinkmoe::attention;

// ---------------------------------------------------------------------------------------------
// Policy product, sink::none (vanilla: key 0 is the sink)
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(product_sink_none)

BOOST_AUTO_TEST_CASE(gate_none) {
  const auto r = fc::run_product_masks<sink::none, gate::none>(10000);
  BOOST_TEST(r.combinations == 4);  // every mask, route sink_mass
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(fc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}
BOOST_AUTO_TEST_CASE(gate_headwise) {
  const auto r = fc::run_product_masks<sink::none, gate::headwise>(11000);
  BOOST_TEST(r.combinations == 12);  // every mask x routes output_gate, sink_mass, product
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(fc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}
BOOST_AUTO_TEST_CASE(gate_elementwise) {
  const auto r = fc::run_product_masks<sink::none, gate::elementwise>(12000);
  BOOST_TEST(r.combinations == 12);  // every mask x routes output_gate, sink_mass, product
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(fc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Head dim 128 and fp16: a few combinations each, on the product's larger shapes
// ---------------------------------------------------------------------------------------------

namespace {

/// Product shapes 1 (B 2, Tq 65, Tk 130, GQA 2), 2 (Tq 130 > Tk 63, empty causal rows) and 4
/// (Tq 64, Tk 65, top-left).
template <class Attn, int HeadDim, class E>
void run_larger_shapes(unsigned seed) {
  const std::vector<fc::case_spec> shapes = fc::product_shapes(seed);
  for (int i : {1, 2, 4})
    fc::run_case<Attn, HeadDim, E>(shapes[i], fc::describe<Attn, HeadDim, E>(shapes[i]));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(head_dims_and_types)

BOOST_AUTO_TEST_CASE(bf16_head_dim_128) {
  run_larger_shapes<attention<sink::none, gate::none, mask::causal>, 128, bf16>(40000);
  run_larger_shapes<attention<sink::learned, gate::headwise, mask::sliding_window, route::product>,
                    128, bf16>(40100);
  run_larger_shapes<attention<sink::fixed, gate::elementwise, mask::streaming>, 128, bf16>(40200);
}

BOOST_AUTO_TEST_CASE(fp16_head_dim_64) {
  run_larger_shapes<attention<sink::none, gate::none, mask::none>, 64, fp16>(41000);
  run_larger_shapes<attention<sink::learned, gate::elementwise, mask::causal>, 64, fp16>(41100);
  run_larger_shapes<attention<sink::fixed, gate::headwise, mask::sliding_window>, 64, fp16>(41200);
}

BOOST_AUTO_TEST_CASE(fp16_head_dim_128) {
  run_larger_shapes<attention<sink::learned, gate::elementwise, mask::streaming, route::product>,
                    128, fp16>(42000);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Variable-length batches (cu_seqlens): tile-boundary lengths, a sequence without queries and
// one without keys (its rows are empty: out 0, G 0, lse = the sink)
// ---------------------------------------------------------------------------------------------

namespace {

fc::case_spec varlen_case(unsigned seed, int window, int sink_tokens, double fixed_sink) {
  fc::case_spec s = fc::dense(1, 0, 0, 4, 2);
  s.q_len = {1, 65, 0, 63, 130, 3};
  s.k_len = {64, 130, 5, 0, 64, 2};
  s.window = window;
  s.sink_tokens = sink_tokens;
  s.fixed_sink = fixed_sink;
  s.seed = seed;
  return s;
}

template <class Attn>
void run_varlen(const fc::case_spec& s) {
  fc::run_case<Attn, 64, bf16>(s, fc::describe<Attn, 64, bf16>(s));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(variable_length)

BOOST_AUTO_TEST_CASE(sequences_of_tile_boundary_lengths) {
  run_varlen<attention<sink::learned, gate::headwise, mask::causal>>(varlen_case(50000, 1, 0, 0));
  run_varlen<attention<sink::none, gate::none, mask::sliding_window>>(varlen_case(50100, 3, 0, 0));
  run_varlen<attention<sink::fixed, gate::elementwise, mask::streaming, route::product>>(
      varlen_case(50200, 64, 2, 5.0));
  run_varlen<attention<sink::none, gate::elementwise, mask::none>>(varlen_case(50300, 1, 0, 0));
}

namespace {

/// A packed batch of three sequences (q rows 5, 65, 70; keys 5, 65, 70) and its outputs, for the
/// max_seqlen paths (trusted offsets: no host copy, no synchronisation on the GPU).
struct packed_batch {
  using attn = attention<sink::learned, gate::none, mask::causal>;
  static constexpr int total = 140, d = 64, hq = 2;
  std::vector<bf16> q, k, v, out;
  std::vector<float> sinks{1.0f, -2.0f}, lse;
  std::vector<std::int32_t> cu{0, 5, 70, 140};
  sinkmoe::forward_args<bf16> a;
  packed_batch() {
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    for (auto* x : {&q, &k, &v}) {
      x->resize(std::size_t(total) * hq * d);
      for (bf16& e : *x) e = arch::from_float<bf16>(normal(rng));
    }
    out.assign(q.size(), arch::from_bits<bf16>(0x7fc1));
    lse.assign(std::size_t(hq) * total, std::nanf(""));
    a.q = {q.data(), {1, total, hq, d}};
    a.k = {k.data(), {1, total, hq, d}};
    a.v = {v.data(), {1, total, hq, d}};
    a.sinks = {sinks.data(), {hq}};
    a.out = {out.data(), {1, total, hq, d}};
    a.lse = {lse.data(), {1, hq, total}};
    a.varlen = {cu.data(), cu.data(), 3};
  }
  std::vector<std::uint16_t> out_bits() const {
    std::vector<std::uint16_t> b;
    for (bf16 e : out) b.push_back(arch::to_bits(e));
    return b;
  }
};

}  // namespace

BOOST_AUTO_TEST_CASE(given_max_seqlen_gives_the_same_outputs) {
  packed_batch reference;
  sinkmoe::testing::emulated_fused_forward<packed_batch::attn, 64>(reference.a);
  for (const auto [mq, mk] : {std::pair{70, 70}, std::pair{100, 128}}) {
    packed_batch b;
    b.a.varlen.max_seqlen_q = mq;
    b.a.varlen.max_seqlen_k = mk;
    sinkmoe::testing::emulated_fused_forward<packed_batch::attn, 64>(b.a);
    BOOST_TEST(b.out_bits() == reference.out_bits());
    BOOST_TEST(std::memcmp(b.lse.data(), reference.lse.data(), b.lse.size() * 4) == 0);
  }
  // Host-readable offsets are checked against the lengths given.
  packed_batch b;
  b.a.varlen.max_seqlen_q = 64;
  b.a.varlen.max_seqlen_k = 70;
  BOOST_TEST(sinkmoe::testing::throws_naming(
      [&] { packed_batch::attn::validate(b.a); },
      {"varlen.cu_seqlens_q", "sequence 1", "65 rows", "max_seqlen 64"}));
}

BOOST_AUTO_TEST_CASE(trusted_offsets_never_reach_outside_the_tensors) {
  // Offsets the host does not read (exec::cuda with max_seqlen given) may be wrong: the kernel
  // clamps them to the tensors' rows and the given lengths, so the emulation's bounds check (every
  // tensor registered) sees no access outside, whatever they hold.
  using attn = packed_batch::attn;
  for (const std::vector<std::int32_t>& bad :
       {std::vector<std::int32_t>{0, 500, 3, 140}, std::vector<std::int32_t>{-7, 90, 60, 9999},
        std::vector<std::int32_t>{140, 0, 140, 0}}) {
    packed_batch b;
    b.a.varlen.max_seqlen_q = 70;
    b.a.varlen.max_seqlen_k = 70;
    const sinkmoe::problem_shape shape =
        sinkmoe::detail::validate_forward<attn::sink_type, attn::gate_type, attn::mask_type,
                                          attn::score_type>(b.a, sinkmoe::detail::offsets::trusted);
    std::vector<std::int32_t> offsets = bad;
    b.a.varlen.cu_seqlens_q = b.a.varlen.cu_seqlens_k = offsets.data();
    using kernel = sinkmoe::fused::forward_kernel<attn, bf16, 64>;
    const auto p = sinkmoe::fused::make_forward_params(b.a, shape, 70, 70);
    const auto g = sinkmoe::fused::forward_geometry<kernel>(shape, 70);
    BOOST_CHECK_NO_THROW(sinkmoe::testing::emulator_for(sinkmoe::testing::forward_ranges(b.a))
                             .launch(g.grid, g.block, g.smem_bytes, kernel{}, p));
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Score policy: soft-cap (the non-linear path: Score::transform on every score, factor log2 e)
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(softcap_scores) {
  for (fc::case_spec s : {fc::product_shapes(60000)[1], fc::product_shapes(60100)[2]}) {
    s.softcap = 2.5;  // with q_scale 3 most scores saturate
    using vanilla = attention<sink::none, gate::none, mask::causal, route::deduced, score::softcap>;
    using sinked =
        attention<sink::learned, gate::headwise, mask::causal, route::deduced, score::softcap>;
    fc::run_case<vanilla, 64, bf16>(s, fc::describe<vanilla, 64, bf16>(s));
    fc::run_case<sinked, 64, bf16>(s, fc::describe<sinked, 64, bf16>(s));
  }
}

// ---------------------------------------------------------------------------------------------
// Masks: interior tiles that are partial, and the tiles the kernel skips
// ---------------------------------------------------------------------------------------------

namespace {

using sinkmoe::testing::holey_causal;

/// mma.sync per visited (query tile, key tile) pair and warp at HeadDim 64, where a warp owns 2
/// blocks of 16 rows (fused/traits.hpp): S = Q K^T is 4 d-steps x 8 n-tiles, O += P V 4 key
/// steps x 8 n-tiles, each for both row blocks.
constexpr std::uint64_t k_mma_per_tile_and_warp = 2 * (4 * 8 + 4 * 8);
static_assert(sinkmoe::fused::forward_traits<64>::m_tiles == 2 &&
              sinkmoe::fused::forward_traits<64>::block_q == 128 &&
              sinkmoe::fused::forward_traits<64>::block_k == 64);

}  // namespace

BOOST_AUTO_TEST_SUITE(masks)

BOOST_AUTO_TEST_CASE(interior_tiles_classified_partial_are_masked) {
  using attn = attention<sink::learned, gate::none, holey_causal>;
  for (fc::case_spec s :
       {fc::dense(1, 130, 200, 2, 1), fc::dense(2, 65, 64, 2, 2, true, 1, 0, 0.0, 2.0)}) {
    s.seed = 70000 + static_cast<unsigned>(s.Tq);
    fc::run_case<attn, 64, bf16>(s, fc::describe<attn, 64, bf16>(s));
  }
}

// Only tiles the mask does not classify as empty are visited: the number of mma.sync the
// emulation counts is (visited tile pairs) x 4 warps x 128, with the pairs counted by hand
// (query tiles of 128 rows, key tiles of 64).
BOOST_AUTO_TEST_CASE(empty_tiles_are_skipped) {
  const auto mma_count = [](const fc::case_result& r) { return r.stats.mma; };
  const std::uint64_t per_tile = 4 * k_mma_per_tile_and_warp;  // B = 1, Hq = 1
  {
    // Causal, Tq = Tk = 192: query tile 0 (rows 0-127) sees key tiles 0, 1; query tile 1 (rows
    // 128-191) key tiles 0, 1, 2: 2 + 3.
    using attn = attention<sink::none, gate::none, mask::causal>;
    fc::case_spec s = fc::dense(1, 192, 192, 1, 1);
    s.seed = 71000;
    BOOST_TEST(mma_count(fc::run_case<attn, 64, bf16>(s, fc::describe<attn, 64, bf16>(s))) ==
               5 * per_tile);
  }
  {
    // Sliding window 64, Tq = Tk = 256: query tile 0 sees key tiles 0, 1; query tile 1 (keys
    // 65..255) tiles 1, 2, 3: 2 + 3; key tile 0 is skipped.
    using attn = attention<sink::learned, gate::none, mask::sliding_window>;
    fc::case_spec s = fc::dense(1, 256, 256, 1, 1, false, 64, 0, 0.0);
    s.seed = 71100;
    BOOST_TEST(mma_count(fc::run_case<attn, 64, bf16>(s, fc::describe<attn, 64, bf16>(s))) ==
               5 * per_tile);
  }
  {
    // Streaming, window 64 and 4 sink tokens, Tq = Tk = 256: query tile 0 sees key tiles 0, 1;
    // query tile 1 sees key tile 0 (the sink tokens), 1, 2 and 3: 2 + 4. With a window of 8 and
    // Tq = Tk = 384, query tile 2 (rows 256-383) sees the sink tile 0 and tiles 3, 4, 5 and skips
    // tiles 1 and 2: 2 + 4 + 4.
    using attn = attention<sink::fixed, gate::none, mask::streaming>;
    fc::case_spec s = fc::dense(1, 256, 256, 1, 1, false, 64, 4, 5.0);
    s.seed = 71200;
    BOOST_TEST(mma_count(fc::run_case<attn, 64, bf16>(s, fc::describe<attn, 64, bf16>(s))) ==
               6 * per_tile);
    s = fc::dense(1, 384, 384, 1, 1, false, 8, 4, 5.0);
    s.seed = 71300;
    BOOST_TEST(mma_count(fc::run_case<attn, 64, bf16>(s, fc::describe<attn, 64, bf16>(s))) ==
               10 * per_tile);
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Arguments this path rejects (sinkmoe::error naming the argument, nothing written)
// ---------------------------------------------------------------------------------------------

namespace {

using sinkmoe::testing::throws_naming;

/// A valid small bf16 problem (B 1, T 8, Hq = Hkv = 1, D 64) over caller-owned buffers.
struct small_problem {
  static constexpr int k_t = 8, k_d = 64;
  std::vector<bf16> q, kv, out;
  sinkmoe::forward_args<bf16> args;
  small_problem() : q(k_t * k_d + 16, bf16{0}), kv(k_t * k_d, bf16{0}), out(k_t * k_d + 16) {
    for (auto& x : out) x = arch::from_bits<bf16>(0x1234);
    args.q = {q.data(), {1, k_t, 1, k_d}};
    args.k = {kv.data(), {1, k_t, 1, k_d}};
    args.v = {kv.data(), {1, k_t, 1, k_d}};
    args.out = {out.data(), {1, k_t, 1, k_d}};
  }
  bool out_untouched() const {
    for (const bf16& x : out)
      if (arch::to_bits(x) != 0x1234) return false;
    return true;
  }
};

using vanilla_causal = attention<sink::none, gate::none, mask::causal>;

}  // namespace

BOOST_AUTO_TEST_SUITE(arguments)

BOOST_AUTO_TEST_CASE(misaligned_rows_are_rejected) {
  {
    small_problem p;
    p.args.q.data = p.q.data() + 1;  // 2 bytes off: cp.async needs 16
    BOOST_TEST(
        throws_naming([&] { sinkmoe::testing::emulated_fused_forward<vanilla_causal, 64>(p.args); },
                      {"forward_args.q", "16-byte aligned"}));
    BOOST_TEST(p.out_untouched());
  }
  {
    small_problem p;
    p.args.out.stride = {small_problem::k_t * 65, 65, 65, 1};  // rows 65 elements apart
    p.args.out.shape = {1, small_problem::k_t - 1, 1, 64};
    p.args.q.shape = {1, small_problem::k_t - 1, 1, 64};
    BOOST_TEST(
        throws_naming([&] { sinkmoe::testing::emulated_fused_forward<vanilla_causal, 64>(p.args); },
                      {"forward_args.out", "multiple of 8"}));
    BOOST_TEST(p.out_untouched());
  }
  {
    small_problem p;  // the shared validation runs first: a bad shape names its argument
    p.args.k.shape = {1, small_problem::k_t, 1, 32};
    BOOST_TEST(
        throws_naming([&] { sinkmoe::testing::emulated_fused_forward<vanilla_causal, 64>(p.args); },
                      {"forward_args.k"}));
    BOOST_TEST(p.out_untouched());
  }
}

BOOST_AUTO_TEST_CASE(head_dims_outside_the_instantiated_list_are_rejected) {
  int called_with = 0;
  sinkmoe::fused::dispatch_head_dim(128, [&](auto d) { called_with = decltype(d)::value; });
  BOOST_TEST(called_with == 128);
  sinkmoe::fused::dispatch_head_dim(64, [&](auto d) { called_with = decltype(d)::value; });
  BOOST_TEST(called_with == 64);
  for (int d : {16, 96, 256})
    BOOST_TEST(throws_naming([&] { sinkmoe::fused::dispatch_head_dim(d, [](auto) {}); },
                             {"head_dim = ", std::to_string(d).c_str(), "64, 128"}));
}

BOOST_AUTO_TEST_SUITE_END()
