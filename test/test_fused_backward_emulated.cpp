// The fused backward kernels (include/sinkmoe/cuda/backward_kernel.hpp) run through the host
// emulation of the primitive layer (docs/design.md section 6), after the emulated fused forward,
// and compared with the CPU backend in fp64 under FlashAttention's tolerance rule
// (support/fused_backward_check.hpp says exactly how): dq, dk, dv, d(sinks), d(gate logits),
// with cotangents on out, the router values G and the lse.
//
// This unit: the policy product for sink::none (sink::learned and sink::fixed have their own
// units, test_fused_backward_emulated_{learned,fixed}.cpp, to bound compile time), head dim 128
// and fp16, variable-length batches, soft-cap, and the arguments this path rejects.
#define BOOST_TEST_MODULE fused_backward_emulated
#include <string>

#include "support/fused_backward_check.hpp"
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

BOOST_AUTO_TEST_SUITE(product_sink_none)

BOOST_AUTO_TEST_CASE(gate_none) {
  const auto r = fc::run_backward_product_masks<sink::none, gate::none>(50000);
  BOOST_TEST(r.combinations == 4);  // every mask, route sink_mass
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(fc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}
BOOST_AUTO_TEST_CASE(gate_headwise) {
  const auto r = fc::run_backward_product_masks<sink::none, gate::headwise>(51000);
  BOOST_TEST(r.combinations == 12);  // every mask x routes output_gate, sink_mass, product
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(fc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}
BOOST_AUTO_TEST_CASE(gate_elementwise) {
  const auto r = fc::run_backward_product_masks<sink::none, gate::elementwise>(52000);
  BOOST_TEST(r.combinations == 12);  // every mask x routes output_gate, sink_mass, product
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(fc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Head dim 128 and fp16 (product shapes 1, 2 and 4: GQA 2 with Tk > Tq, empty causal rows with
// Tq > Tk, top-left alignment)
// ---------------------------------------------------------------------------------------------

namespace {

template <class Attn, int HeadDim, class E>
void run_larger_shapes(unsigned seed) {
  const std::vector<fc::case_spec> shapes = fc::product_shapes(seed);
  for (int i : {1, 2, 4})
    fc::run_backward_case<Attn, HeadDim, E>(shapes[i], fc::describe<Attn, HeadDim, E>(shapes[i]));
}

}  // namespace

BOOST_AUTO_TEST_SUITE(head_dims_and_types)

BOOST_AUTO_TEST_CASE(bf16_head_dim_128) {
  run_larger_shapes<attention<sink::none, gate::none, mask::causal>, 128, bf16>(80000);
  run_larger_shapes<attention<sink::learned, gate::headwise, mask::sliding_window, route::product>,
                    128, bf16>(80100);
  run_larger_shapes<attention<sink::fixed, gate::elementwise, mask::streaming>, 128, bf16>(80200);
}

BOOST_AUTO_TEST_CASE(fp16_head_dims_64_and_128) {
  run_larger_shapes<attention<sink::none, gate::elementwise, mask::none>, 64, fp16>(81000);
  run_larger_shapes<attention<sink::learned, gate::elementwise, mask::causal, route::product>, 128,
                    fp16>(81100);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Variable-length batches: tile-boundary lengths, a sequence without queries and one without
// keys (its rows are empty: nothing flows from them, their router gradient is ignored)
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
  fc::run_backward_case<Attn, 64, bf16>(s, fc::describe<Attn, 64, bf16>(s));
}

}  // namespace

BOOST_AUTO_TEST_CASE(variable_length_sequences) {
  run_varlen<attention<sink::learned, gate::headwise, mask::causal>>(varlen_case(82000, 1, 0, 0));
  run_varlen<attention<sink::none, gate::none, mask::sliding_window>>(varlen_case(82100, 3, 0, 0));
  run_varlen<attention<sink::fixed, gate::elementwise, mask::streaming, route::product>>(
      varlen_case(82200, 64, 2, 5.0));
  run_varlen<attention<sink::none, gate::elementwise, mask::none, route::product>>(
      varlen_case(82300, 1, 0, 0));
}

// ---------------------------------------------------------------------------------------------
// Soft-cap scores (dS times ds/d(q.k), no scale folded at the end)
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(softcap_scores) {
  for (fc::case_spec s : {fc::product_shapes(83000)[1], fc::product_shapes(83100)[2]}) {
    s.softcap = 2.5;
    using vanilla = attention<sink::none, gate::none, mask::causal, route::deduced, score::softcap>;
    using sinked =
        attention<sink::learned, gate::headwise, mask::causal, route::deduced, score::softcap>;
    fc::run_backward_case<vanilla, 64, bf16>(s, fc::describe<vanilla, 64, bf16>(s));
    fc::run_backward_case<sinked, 64, bf16>(s, fc::describe<sinked, 64, bf16>(s));
  }
}

// ---------------------------------------------------------------------------------------------
// A mask whose interior tiles are all partial (holes below the diagonal): the per-element
// visible() check must run on every tile of both main kernels
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(interior_tiles_classified_partial_are_masked) {
  using attn = attention<sink::learned, gate::headwise, sinkmoe::testing::holey_causal>;
  for (fc::case_spec s :
       {fc::dense(1, 130, 200, 2, 1), fc::dense(2, 65, 64, 2, 2, true, 1, 0, 0.0, 2.0)}) {
    s.seed = 85000 + static_cast<unsigned>(s.Tq);
    fc::run_backward_case<attn, 64, bf16>(s, fc::describe<attn, 64, bf16>(s));
  }
}

// ---------------------------------------------------------------------------------------------
// Skipped tiles: the mma.sync count of the backward launches is, at HeadDim 64 (fused/traits.hpp),
//   dK/dV: (visited (64-query item, 128-key block) pairs) x 4 warps x 256 (S^T, dP^T, dV, dK,
//          each 4 x 32 for a warp's 2 blocks of 16 keys over two 32-query passes)
//   dQ:    (visited (64-query, 64-key) tile pairs) x 4 warps x 96 (S, dP, dQ: 3 x 32)
// with the visited pairs counted by hand
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(empty_tiles_are_skipped) {
  static_assert(sinkmoe::fused::dkdv_traits<64>::block_k == 128 &&
                sinkmoe::fused::dkdv_traits<64>::block_q == 64 &&
                sinkmoe::fused::dq_traits<64>::block_q == 64 &&
                sinkmoe::fused::dq_traits<64>::block_k == 64);
  constexpr std::uint64_t per_item = 4 * 256, per_dq_pair = 4 * 96;
  const auto count = [](auto attn_tag, fc::case_spec spec) {
    using attn = decltype(attn_tag);
    const fc::problem pb =
        fc::make_problem<typename attn::sink_type, typename attn::gate_type,
                         typename attn::mask_type, typename attn::route_type, bf16>(spec, 64);
    const auto ct = fc::make_cotangents<bf16>(pb, spec.seed);
    return fc::run_backward_kernels<attn, 64, bf16>(pb, ct).backward_stats.mma;
  };
  // Causal, Tq = Tk = 192: dQ, query tile i sees key tiles 0..i: 1 + 2 + 3 pairs; dK/dV, key
  // block 0 is seen by query tiles 0-2, block 1 (keys 128-191) by query tile 2: 3 + 1 items.
  BOOST_TEST(count(attention<sink::none, gate::none, mask::causal>{},
                   fc::dense(1, 192, 192, 1, 1)) == 6 * per_dq_pair + 4 * per_item);
  // Sliding window 64, Tq = Tk = 256: dQ, tiles i-1 and i: 1 + 2 + 2 + 2; dK/dV, key block 0
  // by query tiles 0-2, block 1 by 2-3: 3 + 2.
  BOOST_TEST(count(attention<sink::learned, gate::none, mask::sliding_window>{},
                   fc::dense(1, 256, 256, 1, 1, false, 64, 0, 0.0)) ==
             7 * per_dq_pair + 5 * per_item);
  // Streaming, window 64, 4 sink tokens: dQ 1 + 2 + 3 + 3 (key tile 0 holds the sink tokens);
  // dK/dV, key block 0 by every query tile, block 1 by 2-3: 4 + 2.
  BOOST_TEST(count(attention<sink::fixed, gate::headwise, mask::streaming>{},
                   fc::dense(1, 256, 256, 1, 1, false, 64, 4, 5.0)) ==
             9 * per_dq_pair + 6 * per_item);
}

// ---------------------------------------------------------------------------------------------
// Arguments this path rejects (sinkmoe::error naming the argument, nothing written)
// ---------------------------------------------------------------------------------------------

namespace {

using sinkmoe::testing::throws_naming;

/// A valid small bf16 problem (B 1, T 8, Hq = Hkv = 1, D 64) with its gradients.
struct small_problem {
  static constexpr int k_t = 8, k_d = 64;
  std::vector<bf16> q, kv, out, dout, grads;
  std::vector<float> lse;
  sinkmoe::forward_args<bf16> args;
  sinkmoe::backward_args<bf16> g;
  small_problem()
      : q(k_t * k_d + 16, bf16{0}),
        kv(k_t * k_d, bf16{0}),
        out(k_t * k_d, bf16{0}),
        dout(out.size(), bf16{0}),
        grads(3 * k_t * k_d + 16),
        lse(k_t, 0.0f) {
    for (auto& x : grads) x = arch::from_bits<bf16>(0x1234);
    args.q = {q.data(), {1, k_t, 1, k_d}};
    args.k = {kv.data(), {1, k_t, 1, k_d}};
    args.v = {kv.data(), {1, k_t, 1, k_d}};
    args.out = {out.data(), {1, k_t, 1, k_d}};
    args.lse = {lse.data(), {1, 1, k_t}};
    g.dout = {dout.data(), {1, k_t, 1, k_d}};
    g.dq = {grads.data(), {1, k_t, 1, k_d}};
    g.dk = {grads.data() + k_t * k_d, {1, k_t, 1, k_d}};
    g.dv = {grads.data() + 2 * k_t * k_d, {1, k_t, 1, k_d}};
  }
  bool grads_untouched() const {
    for (const bf16& x : grads)
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
    // dq one element past a 16-byte boundary, in a buffer of its own: a view past the end of
    // `grads` could overlap whatever the heap put there, and the overlap check would then name
    // that first (it did, depending on the build's heap layout).
    std::vector<bf16> dq(small_problem::k_t * small_problem::k_d + 8,
                         arch::from_bits<bf16>(0x1234));
    p.g.dq.data = dq.data() + 1;
    BOOST_TEST(throws_naming(
        [&] { sinkmoe::testing::emulated_fused_backward<vanilla_causal, 64>(p.args, p.g); },
        {"backward_args.dq", "16-byte aligned"}));
    BOOST_TEST(p.grads_untouched());
    for (const bf16& x : dq) BOOST_TEST(arch::to_bits(x) == 0x1234);
  }
  {
    small_problem p;  // the shared validation runs first: a missing lse names its argument
    p.args.lse = {};
    BOOST_TEST(throws_naming(
        [&] { sinkmoe::testing::emulated_fused_backward<vanilla_causal, 64>(p.args, p.g); },
        {"lse"}));
    BOOST_TEST(p.grads_untouched());
  }
}

BOOST_AUTO_TEST_CASE(misaligned_elementwise_dgate_is_rejected) {
  // The preprocess stores d(gate logits) in pairs (32-bit): a view at an odd element offset or
  // with an odd stride would fault on the GPU, so validation refuses it, naming the argument.
  using gated = attention<sink::none, gate::elementwise, mask::causal>;
  const int t = small_problem::k_t, d = small_problem::k_d;
  for (const int variant : {0, 1}) {
    small_problem p;
    std::vector<bf16> z(t * d + 2, bf16{0}), dz(t * d + 2, arch::from_bits<bf16>(0x1234));
    p.args.gate_logits = {z.data(), {1, t, 1, d}};
    if (variant == 0) {
      p.g.dgate_logits = {dz.data() + 1, {1, t, 1, d}};  // odd element offset
    } else {
      p.g.dgate_logits = {dz.data(), {1, t, 1, d}, {t * (d + 1), d + 1, d + 1, 1}};  // odd stride
      dz.resize(t * (d + 1) + 2, arch::from_bits<bf16>(0x1234));
      p.g.dgate_logits.data = dz.data();
    }
    BOOST_TEST(throws_naming(
        [&] { sinkmoe::testing::emulated_fused_backward<gated, 64>(p.args, p.g); },
        {"backward_args.dgate_logits", variant == 0 ? "4-byte aligned" : "multiple of 2"}));
    BOOST_TEST(p.grads_untouched());
    for (const bf16& x : dz) BOOST_TEST(arch::to_bits(x) == 0x1234);
  }
}

BOOST_AUTO_TEST_CASE(workspace_too_small_is_rejected) {
  small_problem p;
  const sinkmoe::problem_shape shape = vanilla_causal::validate(p.args, p.g);
  const auto layout = sinkmoe::fused::backward_workspace<vanilla_causal, bf16>(shape, 8, 8);
  BOOST_TEST(layout.total_bytes > 0u);
  alignas(256) static unsigned char storage[4096];
  BOOST_TEST_REQUIRE(layout.total_bytes <= sizeof(storage));
  BOOST_TEST(throws_naming(
      [&] {
        sinkmoe::fused::make_backward_params<vanilla_causal>(p.args, p.g, shape, layout, 8, 8,
                                                             storage, layout.total_bytes - 1);
      },
      {"workspace", "needed"}));
  BOOST_TEST(throws_naming(
      [&] {
        sinkmoe::fused::make_backward_params<vanilla_causal>(p.args, p.g, shape, layout, 8, 8,
                                                             storage + 16, layout.total_bytes);
      },
      {"workspace", "256-byte aligned"}));
}

BOOST_AUTO_TEST_SUITE_END()
