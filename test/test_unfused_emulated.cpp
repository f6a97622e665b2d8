// The unfused attention path (include/sinkmoe/cuda/unfused/) without a GPU: the algorithm with a
// host GEMM in place of cuBLASLt and its row kernels under the fiber emulation of the primitive
// layer, forward and backward, against the CPU backend in fp64 under FlashAttention's tolerance
// rule (support/unfused_check.hpp says exactly how).
//
// This unit: the policy product for sink::none (sink::learned and sink::fixed have their own
// units, test_unfused_emulated_{learned,fixed}.cpp, to bound compile time), head dims 64, 80, 96
// and 256 in bf16 and fp16 with GQA 1, 2 and 4, chunk sizes, soft-cap, zero-length sequences,
// the GEMM work the key hulls save, the workspace helpers and the arguments this path rejects.
#define BOOST_TEST_MODULE unfused_emulated
#include <string>

#include "support/unfused_check.hpp"

namespace uc = sinkmoe::testing::unfused_check;
namespace fc = sinkmoe::testing::fused_check;
namespace arch = sinkmoe::arch;
namespace gate = sinkmoe::gate;
namespace mask = sinkmoe::mask;
namespace route = sinkmoe::route;
namespace sink = sinkmoe::sink;
namespace score = sinkmoe::score;
namespace unfused = sinkmoe::unfused;
using arch::bf16;
using arch::fp16;
using sinkmoe::attention;

BOOST_AUTO_TEST_SUITE(product_sink_none)

BOOST_AUTO_TEST_CASE(gate_none) {
  const auto r = uc::run_product_masks<sink::none, gate::none>(110000);
  BOOST_TEST(r.combinations == 4);  // every mask, route sink_mass
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(uc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}
BOOST_AUTO_TEST_CASE(gate_headwise) {
  const auto r = uc::run_product_masks<sink::none, gate::headwise>(111000);
  BOOST_TEST(r.combinations == 12);  // every mask x routes output_gate, sink_mass, product
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(uc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}
BOOST_AUTO_TEST_CASE(gate_elementwise) {
  const auto r = uc::run_product_masks<sink::none, gate::elementwise>(112000);
  BOOST_TEST(r.combinations == 12);  // every mask x routes output_gate, sink_mass, product
  BOOST_TEST(r.cases == r.combinations * static_cast<int>(uc::product_shapes(0).size()));
  BOOST_TEST(r.worst_ratio <= 1.0);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Head dims the fused kernels do not instantiate, both element types, GQA 1 / 2 / 4
// ---------------------------------------------------------------------------------------------

namespace {

/// B 2, Tq 21, Tk 26, Hq 4 with Hkv 4 / 2 / 1 (GQA 1, 2, 4), windows 5, 2 sink tokens.
std::vector<fc::case_spec> head_dim_shapes(unsigned seed) {
  std::vector<fc::case_spec> shapes = {fc::dense(2, 21, 26, 4, 2, false, 5, 2, 5.0, 2.0),
                                       fc::dense(1, 21, 26, 4, 4, true, 5, 2, 0.0),
                                       fc::dense(1, 26, 21, 4, 1, false, 5, 2, -30.0)};
  for (std::size_t i = 0; i < shapes.size(); ++i) shapes[i].seed = seed + static_cast<unsigned>(i);
  return shapes;
}

template <class Attn, class E>
void run_head_dim(int head_dim, unsigned seed) {
  for (const fc::case_spec& s : head_dim_shapes(seed)) uc::run_case<Attn, E>(s, head_dim, 8);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(head_dims_and_types)

BOOST_AUTO_TEST_CASE(bf16_head_dims_64_80_96) {
  run_head_dim<attention<sink::none, gate::none, mask::causal>, bf16>(64, 120000);
  run_head_dim<attention<sink::learned, gate::headwise, mask::sliding_window, route::product>,
               bf16>(80, 120100);
  run_head_dim<attention<sink::fixed, gate::elementwise, mask::streaming>, bf16>(96, 120200);
}

BOOST_AUTO_TEST_CASE(fp16_head_dims_80_96) {
  run_head_dim<attention<sink::learned, gate::elementwise, mask::causal>, fp16>(80, 121000);
  run_head_dim<attention<sink::none, gate::headwise, mask::streaming>, fp16>(96, 121100);
}

BOOST_AUTO_TEST_CASE(head_dim_256) {
  fc::case_spec s = fc::dense(1, 9, 12, 2, 1, false, 4, 1, 0.0);
  s.seed = 122000;
  uc::run_case<attention<sink::learned, gate::elementwise, mask::sliding_window>, bf16>(s, 256, 4);
  s.seed = 122001;
  uc::run_case<attention<sink::none, gate::none, mask::none>, fp16>(s, 256, 4);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Chunking: any chunk size gives the same forward (rows are independent and the key hull only
// drops zero probabilities), and passes the rule forward and backward
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(chunk_sizes) {
  using attn = attention<sink::learned, gate::headwise, mask::sliding_window, route::product>;
  fc::case_spec s = fc::dense(2, 23, 30, 4, 2, false, 6, 0, 0.0, 2.0);
  s.seed = 130000;
  const fc::problem pb =
      fc::make_problem<sink::learned, gate::headwise, mask::sliding_window, route::product, bf16>(
          s, 32);
  const sinkmoe::testing::ref::cotangents ct = uc::make_cotangents<bf16>(pb);
  const uc::unfused_run whole = uc::run_unfused<attn, bf16>(pb, ct, 23);
  for (int chunk : {1, 4, 7, 22, 23, 64}) {
    BOOST_TEST_CONTEXT("chunk rows " << chunk) {
      const uc::unfused_run r = uc::run_unfused<attn, bf16>(pb, ct, chunk);
      BOOST_TEST(r.forward.out == whole.forward.out);
      BOOST_TEST(r.forward.lse == whole.forward.lse);
      BOOST_TEST(r.forward.router == whole.forward.router);
      uc::run_case<attn, bf16>(s, 32, chunk);
    }
  }
}

// The GEMMs only cover each chunk's key hull: forward (S, O) and backward (S, dP, dV, dK, dQ)
// cost 7 * B * Hq * D * sum over chunks of rows * hull width multiply-adds.
BOOST_AUTO_TEST_CASE(gemms_cover_only_the_key_hull) {
  using attn = attention<sink::none, gate::none, mask::sliding_window>;
  const int B = 1, Tq = 40, Tk = 40, Hq = 2, D = 16, window = 3, chunk = 8;
  fc::case_spec s = fc::dense(B, Tq, Tk, Hq, 1, false, window, 0, 0.0);
  s.seed = 131000;
  const fc::problem pb =
      fc::make_problem<sink::none, gate::none, mask::sliding_window, route::sink_mass, bf16>(s, D);
  const uc::unfused_run r = uc::run_unfused<attn, bf16>(pb, uc::make_cotangents<bf16>(pb), chunk);
  // Chunk [q0, q0 + 8) sees keys (q0 - 3, q0 + 8): 10 keys, the first chunk 8.
  std::uint64_t rows_times_keys = 0;
  for (int q0 = 0; q0 < Tq; q0 += chunk)
    rows_times_keys += std::uint64_t(chunk) * (q0 == 0 ? 8 : 10);
  BOOST_TEST(r.gemm_multiply_adds == 7u * B * Hq * D * rows_times_keys);
  BOOST_TEST(r.gemm_multiply_adds < 7u * B * Hq * D * std::uint64_t(Tq) * Tk / 3);
}

BOOST_AUTO_TEST_CASE(softcap_scores) {
  fc::case_spec s = fc::dense(2, 15, 18, 4, 2, false, 1, 0, 0.0, 3.0);
  s.softcap = 2.5;  // with q_scale 3 most scores saturate
  s.seed = 132000;
  uc::run_case<attention<sink::none, gate::none, mask::causal, route::deduced, score::softcap>,
               bf16>(s, 48, 6);
  s.seed = 132001;
  uc::run_case<
      attention<sink::learned, gate::elementwise, mask::causal, route::deduced, score::softcap>,
      fp16>(s, 48, 6);
}

// Zero-length sequences: no keys (every row empty: out 0, G 0, lse the sink, dq 0; for a
// learned sink dsinks = sum dlse), against the references; no queries (the fp64 runner takes
// none): dk = dv = 0 and dsinks = 0 exactly, everything written.
BOOST_AUTO_TEST_CASE(zero_length_sequences) {
  fc::case_spec no_keys = fc::dense(2, 5, 0, 2, 1);
  no_keys.seed = 133000;
  uc::run_case<attention<sink::learned, gate::headwise, mask::none>, bf16>(no_keys, 16, 2);
  uc::run_case<attention<sink::none, gate::none, mask::none>, bf16>(no_keys, 16, 2);

  using attn = attention<sink::learned, gate::elementwise, mask::causal>;
  fc::case_spec no_queries = fc::dense(2, 0, 7, 2, 1);
  no_queries.seed = 133100;
  const fc::problem pb =
      fc::make_problem<sink::learned, gate::elementwise, mask::causal, route::output_gate, bf16>(
          no_queries, 16);
  const uc::unfused_run r = uc::run_unfused<attn, bf16>(pb, uc::make_cotangents<bf16>(pb), 3);
  BOOST_TEST(r.padding_intact);
  BOOST_TEST(r.workspace_guard_intact);
  BOOST_TEST(r.gemm_calls == 0u);
  BOOST_TEST(r.grads.dk.size() == std::size_t(2 * 7 * 1 * 16));
  const auto all_zero = [](const std::vector<double>& x) {
    for (double v : x)
      if (v != 0.0) return false;  // NaN (never written) fails too
    return true;
  };
  BOOST_TEST(all_zero(r.grads.dk));
  BOOST_TEST(all_zero(r.grads.dv));
  BOOST_TEST(r.grads.dsinks.size() == 2u);
  BOOST_TEST(all_zero(r.grads.dsinks));
}

// ---------------------------------------------------------------------------------------------
// Workspace helpers
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(workspace_helpers) {
  sinkmoe::problem_shape shape;
  shape.batch = 2;
  shape.num_seqs = 2;
  shape.tq = 1000;
  shape.tk = 3000;
  shape.q_heads = 8;
  shape.kv_heads = 2;
  shape.head_dim = 64;
  shape.gate_dim = 64;
  // The chunk buffers grow by Hq * ld * (6 or 12) bytes per row (plus per-row statistics).
  const std::size_t ld = 3000;  // already a multiple of 8
  for (unfused::pass which : {unfused::pass::forward, unfused::pass::backward}) {
    const std::size_t one = unfused::workspace_bytes(shape, 100, which);
    const std::size_t two = unfused::workspace_bytes(shape, 200, which);
    const std::size_t score_bytes = which == unfused::pass::forward ? 6 : 12;
    BOOST_TEST(two - one >= 100 * shape.q_heads * ld * score_bytes);
    BOOST_TEST(two - one <= 100 * shape.q_heads * (ld * score_bytes + 64 * 64) + 8 * 256);
  }
  // default_chunk_rows: within the budget, at most Tq, at least 1.
  const int rows = unfused::default_chunk_rows(shape, std::size_t(64) << 20);
  BOOST_TEST(rows >= 1);
  BOOST_TEST(rows < shape.tq);
  BOOST_TEST(std::size_t(rows) * shape.q_heads * ld * 12 <= std::size_t(64) << 20);
  BOOST_TEST(std::size_t(rows + 1) * shape.q_heads * ld * 12 > std::size_t(64) << 20);
  BOOST_TEST(unfused::default_chunk_rows(shape, std::size_t(1) << 40) == shape.tq);
  BOOST_TEST(unfused::default_chunk_rows(shape, 1) == 1);
  BOOST_CHECK_THROW(unfused::workspace_bytes(shape, 0, unfused::pass::forward), sinkmoe::error);
}

// ---------------------------------------------------------------------------------------------
// Arguments this path rejects (after the shared validation), before writing anything
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(rejected_arguments) {
  using attn = attention<sink::none, gate::none, mask::causal>;
  const int B = 1, T = 4, H = 1, D = 16;
  std::vector<bf16> q(B * T * H * D), k(q.size()), v(q.size()), out(q.size());
  std::vector<float> lse(B * H * T);
  sinkmoe::forward_args<bf16> a;
  a.q = {q.data(), {B, T, H, D}};
  a.k = {k.data(), {B, T, H, D}};
  a.v = {v.data(), {B, T, H, D}};
  a.out = {out.data(), {B, T, H, D}};
  a.lse = {lse.data(), {B, H, T}};
  BOOST_CHECK_NO_THROW(unfused::validate_forward<attn>(a));

  const auto message_of = [](const auto& call) -> std::string {
    try {
      call();
    } catch (const sinkmoe::error& e) {
      return e.what();
    }
    return "no error";
  };
  // Variable-length batches are accepted (the loops run over sequences; test_padding_emulated
  // runs padded batches, which take the same path), and checked like on the host.
  std::vector<std::int32_t> cu = {0, T}, bad_cu = {0, T + 1};
  sinkmoe::forward_args<bf16> varlen = a;
  varlen.varlen = {cu.data(), cu.data(), 1};
  BOOST_CHECK_NO_THROW(unfused::validate_forward<attn>(varlen));
  varlen.varlen = {bad_cu.data(), cu.data(), 1};
  const std::string m1 = message_of([&] { unfused::validate_forward<attn>(varlen); });
  BOOST_TEST(m1.find("varlen.cu_seqlens_q") != std::string::npos, m1);
  // Rows overlapping within a head (T stride below D): cuBLASLt needs ld >= D.
  sinkmoe::forward_args<bf16> overlapping = a;
  overlapping.k = {k.data(), {B, 2, H, D}, {2 * 8, 8, D, 1}};
  overlapping.v = {v.data(), {B, 2, H, D}};
  const std::string m2 = message_of([&] { unfused::validate_forward<attn>(overlapping); });
  BOOST_TEST(m2.find("forward_args.k") != std::string::npos, m2);
  BOOST_TEST(m2.find("T stride >= D") != std::string::npos, m2);
  // Backward: dq with overlapping rows.
  std::vector<bf16> dout(q.size()), dq(q.size()), dk(q.size()), dv(q.size());
  sinkmoe::backward_args<bf16> g;
  g.dout = {dout.data(), {B, T, H, D}};
  g.dq = {dq.data(), {B, T, H, D}, {T * 4, 4, D, 1}};
  g.dk = {dk.data(), {B, T, H, D}};
  g.dv = {dv.data(), {B, T, H, D}};
  const std::string m3 = message_of([&] { unfused::validate_backward<attn>(a, g); });
  BOOST_TEST(m3.find("backward_args.dq") != std::string::npos, m3);
}
