#pragma once
// CPU forward: flash-style tiled online softmax (docs/method.md sections 1-2). Never materialises
// Tq x Tk: each task owns one (sequence, query head, query tile) and streams the key tiles the
// mask policy does not classify as empty. The sink is added once, after the last key tile.
//
// Scores are computed transposed, S^T = K Q^T ([keys][queries]), so that the online softmax's
// per-query state (running max and sum, rescale factors) lies along the vector lanes: the row
// statistics are lane-wise maxima and sums over keys, with no horizontal reduction, and P V
// reads P^T with the transposed-A tile product.

#include <algorithm>
#include <cstdint>
#include <sinkmoe/args.hpp>
#include <sinkmoe/core/numeric.hpp>
#include <sinkmoe/exec.hpp>
#include <sinkmoe/host/parallel.hpp>
#include <sinkmoe/host/tile_ops.hpp>
#include <sinkmoe/host/workspace.hpp>
#include <sinkmoe/policy/mask.hpp>
#include <sinkmoe/policy/rowwise.hpp>
#include <sinkmoe/policy/sink.hpp>
#include <sinkmoe/policy/tiles.hpp>
#include <type_traits>
#include <vector>

namespace sinkmoe::host {

// Tile sizes, chosen by measurement (bench/host_attention, 2 threads, AVX-512): 32 x 64,
// 64 x 128, 128 x 64 and 128 x 128 were 3-10% slower at D = 64 and 128, T = 512 and 2048.
inline constexpr int k_block_q = 64;  ///< query rows per tile
inline constexpr int k_block_k = 64;  ///< keys per tile

namespace detail {

/// Loads rows [row0, row0 + rows) of one head of a [B, T, H, D] tensor into a zero-padded
/// [Rows][ld] tile, multiplied by `factor`.
template <int Rows, class F, class T>
void load_rows(const tensor_view<const T, 4>& x, int b, int row0, int rows, int head, int d, int ld,
               F factor, F* tile) {
  for (int i = 0; i < rows; ++i) {
    const T* src = &x(b, row0 + i, head, 0);
    F* dst = tile + i * ld;
    for (int c = 0; c < d; ++c) dst[c] = to_accum<F>(src[c]) * factor;
    std::fill(dst + d, dst + ld, F(0));
  }
  std::fill(tile + rows * ld, tile + Rows * ld, F(0));
}

/// Loads the same rows transposed into a zero-padded [ld][Cols] tile, multiplied by `factor`.
template <int Cols, class F, class T>
void load_rows_transposed(const tensor_view<const T, 4>& x, int b, int row0, int rows, int head,
                          int d, int ld, F factor, F* tile) {
  if (rows > 0)
    detail::transpose_scaled(&x(b, row0, head, 0), x.stride[1], rows, d, factor, tile, Cols);
  for (int c = 0; c < d; ++c) std::fill(tile + c * Cols + rows, tile + (c + 1) * Cols, F(0));
  std::fill(tile + d * Cols, tile + ld * Cols, F(0));
}

/// Sets the masked entries of a transposed score tile st[keys][BQ] to -inf: key k0 + j of row
/// j, query q0 + i of lane i. A select per element, so built-in masks (a few compares)
/// vectorise.
template <int BQ, class Mask, class F>
void mask_tile(const Mask& mask, int q0, int rows, int k0, int cols, F* st) {
  for (int j = 0; j < cols; ++j) {
    F* row = st + j * BQ;
    for (int i = 0; i < rows; ++i)
      row[i] = mask.visible(q0 + i, k0 + j) ? row[i] : math::neg_inf<F>();
  }
}

/// Where the mask cuts a tile (keys k0 + j, j < cols, by rows; queries q0 + i, i < rows, along
/// the columns): per key row, the 16-query chunks that see it at all (from tile_class); per query
/// row, the keys of the tile within its hull (from key_range). Outside them every score is
/// masked and every probability exactly 0, so the tile products may skip them.
template <int BK, int BQ, class Mask>
void measure_cut(const Mask& mask, int q0, int rows, int k0, int cols, tile_cut<BK, BQ>& cut) {
  for (int j = 0; j < BK; ++j) {
    int lo = BQ, hi = 0;
    for (int c0 = 0; j < cols && c0 < rows; c0 += 16) {
      const int c1 = std::min(c0 + 16, rows);
      if (mask.tile_class(q0 + c0, q0 + c1, k0 + j, k0 + j + 1) != tile_kind::empty) {
        lo = std::min(lo, c0);
        hi = c0 + 16;
      }
    }
    cut.query_lo[j] = lo < hi ? lo : 0;
    cut.query_hi[j] = lo < hi ? hi : 0;
  }
  for (int i = 0; i < BQ; ++i) {
    const key_span keys = i < rows ? mask.key_range(q0 + i) : key_span{};
    const int lo = std::max(keys.begin - k0, 0), hi = std::min(keys.end - k0, cols);
    cut.key_lo[i] = lo < hi ? lo : 0;
    cut.key_hi[i] = lo < hi ? hi : 0;
  }
}

/// Asks for the cache line at p to be brought into L2. An asm statement on x86: GCC 12 deletes a
/// loop nest whose only statements are __builtin_prefetch (prefetch_rows below compiled to
/// nothing, and the gate logits it was written for arrived only on demand).
inline void prefetch_l2(const void* p) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  asm volatile("prefetcht1 %0" : : "m"(*static_cast<const char*>(p)));
#elif defined(__GNUC__)
  __builtin_prefetch(p, 0, 2);
#else
  (void)p;
#endif
}

/// Asks for rows [row0, row0 + rows) of one head of x (n elements each) to be brought into L2.
template <class T>
void prefetch_rows(const tensor_view<T, 4>& x, int b, int row0, int rows, int head, int n) {
  const std::size_t row_bytes = static_cast<std::size_t>(n) * sizeof(T);
  for (int i = 0; i < rows; ++i) {
    const char* row = reinterpret_cast<const char*>(&x(b, row0 + i, head, 0));
    for (std::size_t off = 0; off < row_bytes; off += 64) prefetch_l2(row + off);
  }
}

/// K and V bytes a task may still stream after prefetching its gate logits (an eighth of a 2 MiB
/// L2).
inline constexpr int k_gate_prefetch_bytes = 256 * 1024;

/// How many rows ahead a row-by-row pass over the caller's tensors asks for its rows.
inline constexpr int k_row_prefetch_distance = 4;

/// One row's gate logits (gate_dim values) as F: the tensor's own row when T is F, else converted
/// into `scratch`. Not copied when it need not be: on an AMD EPYC (Zen 4) the copy's loads held 4%
/// of the gated forward's samples at T = 512, D = 128 (one thread), and reading in place 1-2%.
/// Likely false store-to-load aliasing: one head's rows lie a page apart at H * D = 1024 floats,
/// so every row shares its low address bits with the scratch row the previous copy stored to.
template <class F, class T>
const F* gate_row(const tensor_view<const T, 4>& z, int b, int t, int head, int gate_dim,
                  F* scratch) {
  const T* src = &z(b, t, head, 0);  // unit stride along the last dimension (validated)
  if constexpr (std::is_same_v<T, F>) {
    return src;
  } else {
    for (int c = 0; c < gate_dim; ++c) scratch[c] = to_accum<F>(src[c]);
    return scratch;
  }
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
  // Tasks head by head: the threads then stream the same head's K and V at the same time,
  // shared through L3 when they exceed L2 (ordered by query tile first, T = 8192 and D = 128
  // ran 25% slower). Ordering each head's tiles longest first (causal) measured no better.
  std::vector<task> tasks;
  for (int s = 0; s < shape.num_seqs; ++s) {
    const sequence_span span = sequence_at(shape, a, s);
    for (int h = 0; h < shape.q_heads; ++h)
      for (int q0 = 0; q0 < span.tq; q0 += BQ) tasks.push_back({s, h, q0});
  }

  // K and V are staged once per (sequence, kv head, key tile) in the accumulator type, zero-
  // padded to whole tiles, and shared read-only by every query tile and GQA head: 2x the size of
  // K, still linear in T. Contiguous per head whatever the caller's layout: the rows of one head
  // of a [B, T, H, D] tensor lie H * D apart, which maps them onto a fraction of the cache sets.
  std::vector<int> tile_base(static_cast<std::size_t>(shape.num_seqs) + 1, 0);
  for (int s = 0; s < shape.num_seqs; ++s)
    tile_base[s + 1] = tile_base[s] + (sequence_at(shape, a, s).tk + BK - 1) / BK;
  const int total_tiles = tile_base.back();
  const std::size_t tile_elems = static_cast<std::size_t>(dp) * BK;
  const std::size_t packed_elems =
      static_cast<std::size_t>(shape.kv_heads) * total_tiles * tile_elems;
  detail::scratch_frame scratch;
  F* const k_packed = scratch.take<F>(packed_elems);
  F* const v_packed = scratch.take<F>(packed_elems);
  detail::parallel_for(
      ex.threads, static_cast<std::int64_t>(shape.kv_heads) * total_tiles, [&](std::int64_t pi) {
        const int hk = static_cast<int>(pi / total_tiles),
                  tile = static_cast<int>(pi % total_tiles);
        const int s = static_cast<int>(std::upper_bound(tile_base.begin(), tile_base.end(), tile) -
                                       tile_base.begin()) -
                      1;
        const sequence_span span = sequence_at(shape, a, s);
        const int k0 = (tile - tile_base[s]) * BK, cols = std::min(BK, span.tk - k0);
        const std::size_t at = static_cast<std::size_t>(pi) * tile_elems;
        const int b = span.batch_index, row0 = span.k_begin + k0;
        detail::load_rows<BK>(a.k, b, row0, cols, hk, d, dp, F(1), k_packed + at);
        detail::load_rows<BK>(a.v, b, row0, cols, hk, d, dp, F(1), v_packed + at);
      });

  detail::parallel_for(ex.threads, static_cast<std::int64_t>(tasks.size()), [&](std::int64_t ti) {
    const task tk_ = tasks[ti];
    const sequence_span span = sequence_at(shape, a, tk_.seq);
    const Mask mask(a.params, span.tq, span.tk);
    const Score score(a.params, d);
    const int h = tk_.head, hk = h / group, b = span.batch_index;
    const int q0 = tk_.q0, rows = std::min(BQ, span.tq - q0);

    // Every tile of the task in one L1/L2-sized block, written before it is read (no zeroing).
    detail::scratch_frame task_scratch;
    F* qt_tile = task_scratch.take<F>(
        static_cast<std::size_t>(BQ * dp * 2 + BK * BQ));  // [dp][BQ]: Q^T, scaled
    F* o_acc = qt_tile + dp * BQ;                          // [BQ][dp]
    F* st_tile = o_acc + BQ * dp;                          // [BK][BQ]: S^T, then P^T
    alignas(64) F row_max[BQ], row_sum[BQ], rescale[BQ], first_key_score[BQ];
    std::fill_n(row_max, BQ, math::neg_inf<F>());
    std::fill_n(row_sum, BQ, F(0));
    std::fill_n(first_key_score, BQ, math::neg_inf<F>());

    // A linear score folds its scale into Q; a soft-cap transforms the raw dot products.
    const F q_factor = Score::is_linear ? F(score.scale()) : F(1);
    detail::load_rows_transposed<BQ>(a.q, b, span.q_begin + q0, rows, h, d, dp, q_factor, qt_tile);
    std::fill(o_acc, o_acc + BQ * dp, F(0));

    const key_tile_walk<Mask> tiles(mask, q0, q0 + rows, span.tk, BK);
    // The epilogue's gate logits go into L2 while the last key tiles run, once at most
    // k_gate_prefetch_bytes of K and V remain to stream: any earlier, a long row's K and V stream
    // could evict them again before the epilogue reads them.
    const int gate_prefetch_k0 =
        tiles.end() -
        std::max(1, detail::k_gate_prefetch_bytes / (2 * BK * dp * int(sizeof(F)))) * BK;
    bool gate_prefetched = !Gate::enabled;
    detail::tile_cut<BK, BQ> measured_cut;
    for (int k0 = tiles.first(); tiles.visits(k0); k0 = tiles.next(k0)) {
      if (!gate_prefetched && k0 >= gate_prefetch_k0) {
        detail::prefetch_rows(a.gate_logits, b, span.q_begin + q0, rows, h, shape.gate_dim);
        gate_prefetched = true;
      }
      const int cols = tiles.cols(k0);
      const tile_kind kind = tiles.kind(k0);
      const std::size_t packed_at =
          (static_cast<std::size_t>(hk) * total_tiles + tile_base[tk_.seq] + k0 / BK) * tile_elems;
      const F* k_tile = k_packed + packed_at;
      const F* v_tile = v_packed + packed_at;
      // A tile the mask cuts (the causal diagonal) computes only the scores some query sees,
      // and P V only the keys in each row's hull: the diagonal tile costs about half a tile.
      const detail::tile_cut<BK, BQ>* cut = nullptr;
      if (kind == tile_kind::partial) {
        detail::measure_cut(mask, q0, rows, k0, cols, measured_cut);
        cut = &measured_cut;
      }
      detail::tile_matmul_bt<BK, BQ>(k_tile, dp, qt_tile, d, st_tile, cut, math::neg_inf<F>());

      if constexpr (!Score::is_linear)
        for (int j = 0; j < cols; ++j)
          for (int i = 0; i < rows; ++i) st_tile[j * BQ + i] = score.transform(st_tile[j * BQ + i]);
      if (kind == tile_kind::partial) detail::mask_tile<BQ>(mask, q0, rows, k0, cols, st_tile);
      std::fill(st_tile + cols * BQ, st_tile + BK * BQ, math::neg_inf<F>());  // keys past the end
      if (k0 == 0) std::copy_n(st_tile, BQ, first_key_score);

      detail::softmax_tile_columns<BK, BQ>(st_tile, row_max, row_sum, rescale);
      for (int i = 0; i < rows; ++i)
        if (rescale[i] != F(1)) detail::scale_row(o_acc + i * dp, dp, rescale[i]);
      detail::tile_matmul_at_acc<BQ, BK>(st_tile, v_tile, dp, dp, o_acc, cut);
    }

    // Epilogue per row: add the sink, normalise, gate, router value (docs/method.md section 2).
    F* z = task_scratch.take<F>(static_cast<std::size_t>(std::max(shape.gate_dim, 1)));
    for (int i = 0; i < rows; ++i) {
      const int t = q0 + i;
      const int row = span.q_begin + t;
      const F sink_score = rowwise::sink_score<Sink>(a.params, a.sinks.data, a.sinks.stride[0], h,
                                                     first_key_score[i]);
      const rowwise::forward_row<F> fr =
          rowwise::finish_forward_row<Sink>(row_max[i], row_sum[i], sink_score);
      F* o_row = o_acc + i * dp;
      for (int c = 0; c < d; ++c) o_row[c] *= fr.normaliser;
      const F* gate_logits = z;
      if constexpr (Gate::enabled)
        gate_logits = detail::gate_row(a.gate_logits, b, row, h, shape.gate_dim, z);
      const F gate_value = Gate::forward_row(o_row, d, gate_logits);
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
