#pragma once
// CPU forward: flash-style tiled online softmax (docs/method.md sections 1-2). Never materialises
// Tq x Tk: each task owns one (sequence, query head, query tile) and streams the key tiles the
// mask policy does not classify as empty. The sink is added once, after the last key tile.

#include <algorithm>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/exec.hpp>
#include <sinkmoe/host/parallel.hpp>
#include <sinkmoe/host/tile_ops.hpp>
#include <sinkmoe/policy/mask.hpp>
#include <sinkmoe/policy/rowwise.hpp>
#include <sinkmoe/policy/sink.hpp>
#include <sinkmoe/policy/tiles.hpp>
#include <vector>

namespace sinkmoe::host {

inline constexpr int k_block_q = 64;  ///< query rows per tile
inline constexpr int k_block_k = 64;  ///< keys per tile

namespace detail {

/// Loads rows [row0, row0 + rows) of one head of a [B, T, H, D] tensor into a zero-padded
/// [Rows][ld] tile, multiplied by `factor`.
template <int Rows, class F, class T>
void load_rows(const tensor_view<const T, 4>& x, int b, int row0, int rows, int head, int d, int ld,
               F factor, F* tile) {
  std::fill(tile, tile + Rows * ld, F(0));
  for (int i = 0; i < rows; ++i) {
    const T* src = &x(b, row0 + i, head, 0);
    for (int c = 0; c < d; ++c) tile[i * ld + c] = to_accum<F>(src[c]) * factor;
  }
}

/// Loads the same rows transposed into a zero-padded [ld][Cols] tile.
template <int Cols, class F, class T>
void load_rows_transposed(const tensor_view<const T, 4>& x, int b, int row0, int rows, int head,
                          int d, int ld, F* tile) {
  std::fill(tile, tile + ld * Cols, F(0));
  for (int j = 0; j < rows; ++j) {
    const T* src = &x(b, row0 + j, head, 0);
    for (int c = 0; c < d; ++c) tile[c * Cols + j] = to_accum<F>(src[c]);
  }
}

/// Reads one row's gate logits (gate_dim values) as F.
template <class F, class T>
void load_gate_row(const tensor_view<const T, 4>& z, int b, int t, int head, int gate_dim, F* out) {
  for (int c = 0; c < gate_dim; ++c) out[c] = to_accum<F>(z(b, t, head, c));
}

/// The padding query rows of a padded batch (forward_args::seqlens): out = 0, lse = the sink
/// logit (-inf without one), G = 0, first-key mass = 0, as for a row that sees no key.
template <class Sink, class T>
void write_padding_rows(const forward_args<T>& a, const problem_shape& shape) {
  using F = accum_t<T>;
  const index_t sinks_stride = a.sinks.empty() ? 0 : a.sinks.stride[0];
  for_each_padding_query_row(shape, a, [&](int b, int row) {
    for (int h = 0; h < shape.q_heads; ++h) {
      T* out_row = &a.out(b, row, h, 0);
      std::fill(out_row, out_row + shape.head_dim, T(0));
      if (!a.lse.empty())
        a.lse(b, h, row) = rowwise::empty_row_lse<Sink>(a.params, a.sinks.data, sinks_stride, h);
      if (!a.router.empty()) a.router(b, h, row) = F(0);
      if (!a.first_key_mass.empty()) a.first_key_mass(b, h, row) = F(0);
    }
  });
}

}  // namespace detail

/// Forward pass of attention policy bundle Attn on the CPU. Arguments are already validated.
template <class Attn, class T>
void forward(const exec::host& ex, const forward_args<T>& a, const problem_shape& shape) {
  using F = accum_t<T>;
  using Sink = typename Attn::sink_type;
  using Gate = typename Attn::gate_type;
  using Mask = typename Attn::mask_type;
  using Route = typename Attn::route_type;
  using Score = typename Attn::score_type;
  constexpr int BQ = k_block_q, BK = k_block_k;

  const int d = shape.head_dim;
  const int dp = detail::padded_dim(d);
  const int group = shape.group_size();

  struct task {
    int seq, head, q0;
  };
  std::vector<task> tasks;
  for (int s = 0; s < shape.num_seqs; ++s) {
    const sequence_span span = sequence_at(shape, a, s);
    for (int h = 0; h < shape.q_heads; ++h)
      for (int q0 = 0; q0 < span.tq; q0 += BQ) tasks.push_back({s, h, q0});
  }

  // K^T and V are staged once per (sequence, kv head, key tile) in the accumulator type and
  // shared read-only by every query tile and GQA head: 2x the size of K, still linear in T.
  std::vector<int> tile_base(static_cast<std::size_t>(shape.num_seqs) + 1, 0);
  for (int s = 0; s < shape.num_seqs; ++s)
    tile_base[s + 1] = tile_base[s] + (sequence_at(shape, a, s).tk + BK - 1) / BK;
  const int total_tiles = tile_base.back();
  const std::size_t tile_elems = static_cast<std::size_t>(dp) * BK;
  std::vector<F> kt_packed(static_cast<std::size_t>(shape.kv_heads) * total_tiles * tile_elems);
  std::vector<F> v_packed(kt_packed.size());
  detail::parallel_for(
      ex.threads, static_cast<std::int64_t>(shape.kv_heads) * total_tiles, [&](std::int64_t pi) {
        const int hk = static_cast<int>(pi / total_tiles),
                  tile = static_cast<int>(pi % total_tiles);
        const int s = static_cast<int>(std::upper_bound(tile_base.begin(), tile_base.end(), tile) -
                                       tile_base.begin()) -
                      1;
        const sequence_span span = sequence_at(shape, a, s);
        const int k0 = (tile - tile_base[s]) * BK, cols = std::min(BK, span.tk - k0);
        F* kt = kt_packed.data() + static_cast<std::size_t>(pi) * tile_elems;
        F* vv = v_packed.data() + static_cast<std::size_t>(pi) * tile_elems;
        detail::load_rows_transposed<BK>(a.k, span.batch_index, span.k_begin + k0, cols, hk, d, dp,
                                         kt);
        detail::load_rows<BK>(a.v, span.batch_index, span.k_begin + k0, cols, hk, d, dp, F(1), vv);
      });

  detail::parallel_for(ex.threads, static_cast<std::int64_t>(tasks.size()), [&](std::int64_t ti) {
    const task tk_ = tasks[ti];
    const sequence_span span = sequence_at(shape, a, tk_.seq);
    const Mask mask(a.params, span.tq, span.tk);
    const Score score(a.params, d);
    const int h = tk_.head, hk = h / group, b = span.batch_index;
    const int q0 = tk_.q0, rows = std::min(BQ, span.tq - q0);

    std::vector<F> buffer(static_cast<std::size_t>(BQ * dp * 2 + BQ * BK * 2));
    F* q_tile = buffer.data();
    F* o_acc = q_tile + BQ * dp;
    F* s_tile = o_acc + BQ * dp;
    F* p_tile = s_tile + BQ * BK;
    F row_max[BQ], row_sum[BQ], first_key_score[BQ];
    for (int i = 0; i < BQ; ++i) {
      row_max[i] = math::neg_inf<F>();
      row_sum[i] = F(0);
      first_key_score[i] = math::neg_inf<F>();
    }

    // A linear score folds its scale into Q; a soft-cap transforms the raw dot products.
    const F q_factor = Score::is_linear ? F(score.scale()) : F(1);
    detail::load_rows<BQ>(a.q, b, span.q_begin + q0, rows, h, d, dp, q_factor, q_tile);
    std::fill(o_acc, o_acc + BQ * dp, F(0));

    const key_tile_walk<Mask> tiles(mask, q0, q0 + rows, span.tk, BK);
    for (int k0 = tiles.first(); tiles.visits(k0); k0 = tiles.next(k0)) {
      const int cols = tiles.cols(k0);
      const tile_kind kind = tiles.kind(k0);
      const std::size_t packed_at =
          (static_cast<std::size_t>(hk) * total_tiles + tile_base[tk_.seq] + k0 / BK) * tile_elems;
      const F* kt_ptr = kt_packed.data() + packed_at;
      const F* v_ptr = v_packed.data() + packed_at;
      detail::tile_matmul_bt<BQ, BK>(q_tile, dp, kt_ptr, dp, s_tile);

      for (int i = 0; i < rows; ++i) {
        F* s_row = s_tile + i * BK;
        if constexpr (!Score::is_linear)
          for (int j = 0; j < cols; ++j) s_row[j] = score.transform(s_row[j]);
        if (kind == tile_kind::partial) {
          for (int j = 0; j < cols; ++j)
            if (!mask.visible(q0 + i, k0 + j)) s_row[j] = math::neg_inf<F>();
        }
        for (int j = cols; j < BK; ++j) s_row[j] = math::neg_inf<F>();
        if (k0 == 0) first_key_score[i] = s_row[0];

        F tile_max = math::neg_inf<F>();
        SINKMOE_OMP_SIMD(reduction(max : tile_max))
        for (int j = 0; j < BK; ++j) tile_max = s_row[j] > tile_max ? s_row[j] : tile_max;
        F* p_row = p_tile + i * BK;
        const F new_max = math::max(row_max[i], tile_max);
        if (new_max == math::neg_inf<F>()) {  // nothing visible in this row yet
          std::fill(p_row, p_row + BK, F(0));
          continue;
        }
        const F rescale = math::exp_shifted(row_max[i], new_max);
        detail::exp_row(s_row, new_max, BK, p_row);
        F tile_sum = F(0);
        SINKMOE_OMP_SIMD(reduction(+ : tile_sum))
        for (int j = 0; j < BK; ++j) tile_sum += p_row[j];
        row_sum[i] = row_sum[i] * rescale + tile_sum;
        row_max[i] = new_max;
        F* o_row = o_acc + i * dp;
        if (rescale != F(1))
          for (int c = 0; c < dp; ++c) o_row[c] *= rescale;
      }
      for (int i = rows; i < BQ; ++i) std::fill(p_tile + i * BK, p_tile + (i + 1) * BK, F(0));
      detail::tile_matmul_acc<BQ, BK>(p_tile, v_ptr, dp, dp, o_acc);
    }

    // Epilogue per row: add the sink, normalise, gate, router value (docs/method.md section 2).
    std::vector<F> z(static_cast<std::size_t>(std::max(shape.gate_dim, 1)));
    for (int i = 0; i < rows; ++i) {
      const int t = q0 + i;
      const int row = span.q_begin + t;
      const F sink_score = rowwise::sink_score<Sink>(a.params, a.sinks.data, a.sinks.stride[0], h,
                                                     first_key_score[i]);
      const rowwise::forward_row<F> fr =
          rowwise::finish_forward_row<Sink>(row_max[i], row_sum[i], sink_score);
      F* o_row = o_acc + i * dp;
      for (int c = 0; c < d; ++c) o_row[c] *= fr.normaliser;
      if constexpr (Gate::enabled)
        detail::load_gate_row(a.gate_logits, b, row, h, shape.gate_dim, z.data());
      const F gate_value = Gate::forward_row(o_row, d, z.data());
      T* out_row = &a.out(b, row, h, 0);
      for (int c = 0; c < d; ++c) out_row[c] = from_accum<T>(o_row[c]);
      if (!a.lse.empty()) a.lse(b, h, row) = fr.lse;
      if (!a.router.empty()) a.router(b, h, row) = rowwise::router_value<Route>(fr, gate_value);
      if (!a.first_key_mass.empty())
        a.first_key_mass(b, h, row) = math::exp_shifted(first_key_score[i], fr.lse);
    }
  });
  detail::write_padding_rows<Sink>(a, shape);
}

}  // namespace sinkmoe::host
