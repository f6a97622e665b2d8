// Tensor-parallel heads with sink-aware balancing over MPI (docs/distributed.md).
//
//   mpirun -np 2 ./tensor_parallel_heads        (any count that divides the 4 KV heads)
//
// One sink-attention layer (GPT-OSS style: learned sink logit per head, GQA 8 query heads on 4
// KV heads) whose heads are split across the ranks, KV groups whole, as a tensor-parallel
// attention layer is. Each rank runs the attention of its own heads, then
// balance::distributed_cv2 reduces the head importances of all ranks (one MPI_Allreduce), so the
// CV^2 loss is that of the whole layer, and each rank's backward gets dL/dG for its own heads.
// Rank 0 then runs the whole layer on one process and checks that the loss and its heads'
// gradients are the same (the program fails otherwise).
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <sinkmoe/balance/distributed.hpp>
#include <sinkmoe/balance/mpi.hpp>
#include <sinkmoe/sinkmoe.hpp>
#include <span>
#include <vector>

namespace {

constexpr int kBatch = 2, kSeq = 96, kQHeads = 8, kKvHeads = 4, kHeadDim = 32;
constexpr int kGroup = kQHeads / kKvHeads;
using attention = sinkmoe::sink_attention<sinkmoe::mask::causal>;

/// The whole layer's inputs (every rank builds them from the same seed and keeps its heads).
struct layer_data {
  std::vector<float> q, k, v, sinks;  // [B, T, Hq, D], [B, T, Hkv, D] x 2, [Hq]
};

layer_data make_layer() {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  layer_data d;
  d.q.resize(std::size_t(kBatch) * kSeq * kQHeads * kHeadDim);
  d.k.resize(std::size_t(kBatch) * kSeq * kKvHeads * kHeadDim);
  d.v.resize(d.k.size());
  for (auto* t : {&d.q, &d.k, &d.v})
    for (float& x : *t) x = normal(rng);
  for (int h = 0; h < kQHeads; ++h) d.sinks.push_back(-2.0f + 0.7f * float(h));
  return d;
}

/// Heads [first, first + count) of a [B, T, H, D] tensor, contiguous.
std::vector<float> heads_of(const std::vector<float>& x, int heads, int first, int count) {
  std::vector<float> y(std::size_t(kBatch) * kSeq * count * kHeadDim);
  for (int bt = 0; bt < kBatch * kSeq; ++bt)
    std::copy_n(x.begin() + (std::size_t(bt) * heads + first) * kHeadDim,
                std::size_t(count) * kHeadDim, y.begin() + std::size_t(bt) * count * kHeadDim);
  return y;
}

/// One attention layer of `hq` query heads: forward, balancing through `balance_step`, and the
/// backward of the balance loss alone (dout = 0: dq is then all the balancing's, which the check
/// on rank 0 compares). Returns the loss report and dq.
template <class BalanceStep>
std::pair<sinkmoe::balance::report, std::vector<float>> run_layer(
    const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
    const std::vector<float>& sinks, int hq, BalanceStep&& balance_step) {
  constexpr int B = kBatch, T = kSeq, D = kHeadDim;
  const int hk = hq / kGroup;
  const sinkmoe::exec::host ex{1};
  std::vector<float> out(q.size()), lse(std::size_t(B) * hq * T), router(lse.size());
  sinkmoe::forward_args<float> fa;
  fa.q = {q.data(), {B, T, hq, D}};
  fa.k = {k.data(), {B, T, hk, D}};
  fa.v = {v.data(), {B, T, hk, D}};
  fa.sinks = {sinks.data(), {hq}};
  fa.out = {out.data(), {B, T, hq, D}};
  fa.lse = {lse.data(), {B, hq, T}};
  fa.router = {router.data(), {B, hq, T}};
  attention::forward(ex, fa);

  std::vector<std::uint8_t> counted(std::size_t(B) * T);
  attention::counted_tokens(fa, {counted.data(), {B, T}});
  std::vector<float> drouter(router.size());
  const sinkmoe::balance::layer_input<float> layer{fa.router, {counted.data(), {B, T}}};
  const sinkmoe::tensor_view<float, 3> drouter_view{drouter.data(), {B, hq, T}};
  const sinkmoe::balance::report rep =
      balance_step(ex, std::span(&layer, 1), std::span(&drouter_view, 1));

  std::vector<float> dout(out.size(), 0.0f), dq(q.size()), dk(k.size()), dv(v.size()), dsinks(hq);
  sinkmoe::backward_args<float> ba;
  ba.dout = {dout.data(), {B, T, hq, D}};
  ba.drouter = {drouter.data(), {B, hq, T}};
  ba.dq = {dq.data(), {B, T, hq, D}};
  ba.dk = {dk.data(), {B, T, hk, D}};
  ba.dv = {dv.data(), {B, T, hk, D}};
  ba.dsinks = {dsinks.data(), {hq}};
  attention::backward(ex, fa, ba);
  return {rep, dq};
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  int status = 0;
  try {
    sinkmoe::detail::require(kKvHeads % ranks == 0, "tensor_parallel_heads: ", ranks,
                             " ranks do not divide the ", kKvHeads, " KV heads");
    const layer_data d = make_layer();
    const int kv_local = kKvHeads / ranks, hq_local = kv_local * kGroup;
    const int first_head = rank * hq_local;
    const std::vector<float> q = heads_of(d.q, kQHeads, first_head, hq_local);
    const std::vector<float> k = heads_of(d.k, kKvHeads, rank * kv_local, kv_local);
    const std::vector<float> v = heads_of(d.v, kKvHeads, rank * kv_local, kv_local);
    const std::vector<float> sinks(d.sinks.begin() + first_head,
                                   d.sinks.begin() + first_head + hq_local);

    const sinkmoe::balance::importance_cv2 reg{.lambda = 0.5};
    sinkmoe::balance::distributed_cv2 balancer(reg,
                                               {.layers = 1,
                                                .heads = hq_local,
                                                .model_heads = kQHeads,
                                                .first_head = first_head,
                                                .ranks = ranks},
                                               sinkmoe::balance::mpi_reducer{MPI_COMM_WORLD});
    const auto [rep, dq] = run_layer(q, k, v, sinks, hq_local, [&](auto& ex, auto in, auto dr) {
      return balancer.forward_backward(ex, in, dr);
    });

    if (rank == 0) {
      std::printf("tensor-parallel heads: %d ranks, %d query heads each (KV groups whole)\n", ranks,
                  hq_local);
      std::printf("  head  importance (mean G over the whole layer's tokens)\n");
      for (int h = 0; h < kQHeads; ++h)
        std::printf("  %4d  %.4f%s\n", h, rep.layers[0].importance[std::size_t(h)],
                    h < hq_local ? "  (rank 0)" : "");
      std::printf("  layer CV %.4f, balance loss %.6f\n", rep.layers[0].cv, rep.loss);
      // The same layer on one process: the loss and rank 0's heads' dq must agree.
      const auto [whole, dq_whole] =
          run_layer(d.q, d.k, d.v, d.sinks, kQHeads,
                    [&](auto& ex, auto in, auto dr) { return reg.forward_backward(ex, in, dr); });
      const std::vector<float> mine = heads_of(dq_whole, kQHeads, 0, hq_local);
      double worst = 0.0, scale = 0.0;
      for (std::size_t i = 0; i < mine.size(); ++i) {
        worst = std::max(worst, std::abs(double(mine[i]) - dq[i]));
        scale = std::max(scale, std::abs(double(mine[i])));
      }
      const double loss_diff = std::abs(whole.loss - rep.loss);
      std::printf("  one process: loss %.6f (|diff| %.1e), rank 0's dq max |diff| %.1e of %.2e\n",
                  whole.loss, loss_diff, worst, scale);
      if (!(loss_diff <= 1e-12 * std::max(1.0, whole.loss) && worst <= 1e-5 * scale)) {
        std::printf("tensor_parallel_heads: MISMATCH with the single process\n");
        status = 1;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    status = 1;
  }
  MPI_Allreduce(MPI_IN_PLACE, &status, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return status;
}
