#pragma once
// A non-owning strided view: pointer + shape + strides (in elements). Every tensor crosses the
// API as one, so interleaved projections (Qwen3-Next's [q | gate]) and GQA need no copies.

#include <array>
#include <cstdint>
#include <sinkmoe/core/config.hpp>
#include <sinkmoe/core/error.hpp>  // index_t, shape printing
#include <type_traits>

namespace sinkmoe {

/// Strided view of Rank dimensions over T. Default-constructed views are empty (data == nullptr)
/// and mean "not given" for optional arguments.
template <class T, int Rank>
struct tensor_view {
  static_assert(Rank >= 1, "tensor_view needs at least one dimension");
  using element_type = T;
  static constexpr int rank = Rank;

  T* data = nullptr;
  std::array<index_t, Rank> shape{};
  std::array<index_t, Rank> stride{};

  constexpr tensor_view() = default;
  constexpr tensor_view(T* ptr, std::array<index_t, Rank> shp, std::array<index_t, Rank> strd)
      : data(ptr), shape(shp), stride(strd) {}
  /// A contiguous, row-major view of the given shape.
  constexpr tensor_view(T* ptr, std::array<index_t, Rank> shp) : data(ptr), shape(shp) {
    index_t running = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      stride[d] = running;
      running *= shape[d];
    }
  }
  /// Views of T convert to views of const T.
  template <class U>
  requires(std::is_same_v<const U, T> &&
           !std::is_same_v<U, T>) constexpr tensor_view(const tensor_view<U, Rank>& other)
      : data(other.data), shape(other.shape), stride(other.stride) {}

  [[nodiscard]] constexpr bool empty() const { return data == nullptr; }
  [[nodiscard]] constexpr index_t size(int dim) const { return shape[dim]; }
  [[nodiscard]] constexpr index_t numel() const {
    index_t n = 1;
    for (auto extent : shape) n *= extent;
    return n;
  }
  /// Element offset of a multi-index.
  template <class... I>
  [[nodiscard]] constexpr index_t offset(I... idx) const {
    static_assert(sizeof...(I) == Rank, "index count must equal the rank");
    const index_t indices[] = {static_cast<index_t>(idx)...};
    index_t off = 0;
    for (int d = 0; d < Rank; ++d) off += indices[d] * stride[d];
    return off;
  }
  template <class... I>
  constexpr T& operator()(I... idx) const {
    return data[offset(idx...)];
  }
  /// True when the view covers exactly numel() consecutive elements in row-major order.
  [[nodiscard]] constexpr bool is_contiguous() const {
    index_t running = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      if (shape[d] != 1 && stride[d] != running) return false;
      running *= shape[d];
    }
    return true;
  }
};

}  // namespace sinkmoe
