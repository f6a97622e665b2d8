#pragma once
// The plan cache of sinkmoe::blaslt::context: what makes two GEMMs interchangeable for
// cuBLASLt (plan_key), and a bounded LRU map from keys to plans. Host-only C++20 with no
// cuBLASLt include, so that it is tested in CI; the cuBLASLt plan type lives in matmul.cuh.
//
// A cuBLASLt algorithm is chosen for layouts, types, epilogue and pointer alignment (the
// heuristic reads the alignment of A, B, C, D, and of the bias and aux pointers), never for
// pointer values or alpha/beta: the key holds exactly the former.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <sinkmoe/core/error.hpp>
#include <sinkmoe/cuda/blaslt/desc.hpp>
#include <unordered_map>
#include <utility>

namespace sinkmoe::blaslt {

/// Largest power of two <= 16 dividing the address of every batch of a matrix (base pointer
/// and, when batch > 1, the batch stride in bytes). 16 for a null pointer.
inline std::uint32_t alignment_bytes(const void* pointer, std::int64_t batch_stride_elements,
                                     dtype type, int batch) {
  std::uint64_t bits = reinterpret_cast<std::uintptr_t>(pointer) | 16u;
  if (batch > 1)
    bits |= static_cast<std::uint64_t>(batch_stride_elements) *
            static_cast<std::uint64_t>(element_bytes(type));
  return static_cast<std::uint32_t>(bits & (~bits + 1));  // lowest set bit, at most 16
}

/// Everything cuBLASLt's plan (descriptor, layouts, chosen algorithm) depends on.
struct plan_key {
  int m = 0, n = 0, k = 0, batch = 0;
  bool transpose_a = false, transpose_b = false;
  dtype a_type = dtype::bf16, b_type = dtype::bf16, d_type = dtype::bf16;
  dtype bias_type = dtype::f32;
  epilogue epi = epilogue::none;
  std::int64_t lda = 0, ldb = 0, ldc = 0, ldd = 0, ld_aux = 0;
  std::int64_t batch_stride_a = 0, batch_stride_b = 0, batch_stride_c = 0, batch_stride_d = 0;
  std::uint32_t align_a = 16, align_b = 16, align_c = 16, align_d = 16;
  std::uint32_t align_bias = 16, align_aux = 16;

  friend bool operator==(const plan_key&, const plan_key&) = default;
};

/// The key of a validated desc. Without C (beta == 0) the call runs with C = D: D's layout.
inline plan_key make_plan_key(const matmul_desc& desc) {
  plan_key key;
  key.m = desc.m;
  key.n = desc.n;
  key.k = desc.k;
  key.batch = desc.batch;
  key.transpose_a = desc.transpose_a;
  key.transpose_b = desc.transpose_b;
  key.a_type = desc.a_type;
  key.b_type = desc.b_type;
  key.d_type = desc.d_type;
  key.epi = desc.epi;
  key.lda = desc.lda;
  key.ldb = desc.ldb;
  key.ldd = desc.ldd;
  key.batch_stride_a = desc.batch > 1 ? desc.batch_stride_a : 0;
  key.batch_stride_b = desc.batch > 1 ? desc.batch_stride_b : 0;
  key.batch_stride_d = desc.batch > 1 ? desc.batch_stride_d : 0;
  key.align_a = alignment_bytes(desc.a, desc.batch_stride_a, desc.a_type, desc.batch);
  key.align_b = alignment_bytes(desc.b, desc.batch_stride_b, desc.b_type, desc.batch);
  key.align_d = alignment_bytes(desc.d, desc.batch_stride_d, desc.d_type, desc.batch);
  if (reads_c(desc)) {
    key.ldc = desc.ldc;
    key.batch_stride_c = desc.batch > 1 ? desc.batch_stride_c : 0;
    key.align_c = alignment_bytes(desc.c, desc.batch_stride_c, desc.d_type, desc.batch);
  } else {
    key.ldc = key.ldd;
    key.batch_stride_c = key.batch_stride_d;
    key.align_c = key.align_d;
  }
  if (reads_bias(desc.epi) || writes_bias(desc.epi)) {
    key.bias_type = desc.bias_type;
    key.align_bias = alignment_bytes(desc.bias, 0, desc.bias_type, 1);
  }
  if (reads_aux(desc.epi) || writes_aux(desc.epi)) {
    key.ld_aux = desc.ld_aux;
    key.align_aux = alignment_bytes(desc.aux, 0, desc.d_type, 1);
  }
  return key;
}

/// Hash of a plan_key (boost-style combination of its fields).
struct plan_key_hash {
  std::size_t operator()(const plan_key& key) const noexcept {
    std::size_t seed = 0;
    auto mix = [&seed](std::uint64_t value) {
      seed ^= std::hash<std::uint64_t>{}(value) + 0x9e3779b97f4a7c15ull + (seed << 6) + (seed >> 2);
    };
    mix(static_cast<std::uint64_t>(key.m));
    mix(static_cast<std::uint64_t>(key.n));
    mix(static_cast<std::uint64_t>(key.k));
    mix(static_cast<std::uint64_t>(key.batch));
    mix((key.transpose_a ? 1u : 0u) | (key.transpose_b ? 2u : 0u) |
        (static_cast<std::uint64_t>(key.a_type) << 2) |
        (static_cast<std::uint64_t>(key.b_type) << 4) |
        (static_cast<std::uint64_t>(key.d_type) << 6) |
        (static_cast<std::uint64_t>(key.bias_type) << 8) |
        (static_cast<std::uint64_t>(key.epi) << 10));
    for (std::int64_t value : {key.lda, key.ldb, key.ldc, key.ldd, key.ld_aux, key.batch_stride_a,
                               key.batch_stride_b, key.batch_stride_c, key.batch_stride_d})
      mix(static_cast<std::uint64_t>(value));
    mix(key.align_a | (key.align_b << 5) | (key.align_c << 10) | (key.align_d << 15) |
        (static_cast<std::uint64_t>(key.align_bias) << 20) |
        (static_cast<std::uint64_t>(key.align_aux) << 25));
    return seed;
  }
};

/// A bounded map from plan_key to Plan with least-recently-used eviction. get_or_create
/// returns a reference that stays valid until that entry is evicted or the cache cleared.
/// Not thread-safe (one per context, like the cuBLASLt handle's workspace).
template <class Plan>
class plan_cache {
 public:
  /// A cache holding at most `capacity` plans (>= 1).
  explicit plan_cache(std::size_t capacity) : capacity_(capacity) {
    sinkmoe::detail::require(capacity >= 1, "plan_cache capacity = ", capacity, ": must be >= 1");
  }
  // The index holds iterators into entries_: a copy would point into the original.
  plan_cache(const plan_cache&) = delete;
  plan_cache& operator=(const plan_cache&) = delete;
  plan_cache(plan_cache&&) = default;
  plan_cache& operator=(plan_cache&&) = default;

  /// The plan for key: a hit moves it to the front; a miss builds it with factory() (which
  /// may throw; the cache is then unchanged), evicting the least recently used plan when full.
  template <class Factory>
  Plan& get_or_create(const plan_key& key, Factory&& factory) {
    if (auto found = index_.find(key); found != index_.end()) {
      ++hits_;
      entries_.splice(entries_.begin(), entries_, found->second);
      return found->second->second;
    }
    ++misses_;
    // Build first: a throwing factory leaves the cache untouched.
    Plan plan = std::forward<Factory>(factory)();
    if (entries_.size() == capacity_) {
      index_.erase(entries_.back().first);
      entries_.pop_back();
      ++evictions_;
    }
    entries_.emplace_front(key, std::move(plan));
    index_.emplace(key, entries_.begin());
    return entries_.front().second;
  }

  /// The cached plan for key, or null; does not count as a hit or change the LRU order.
  [[nodiscard]] const Plan* peek(const plan_key& key) const {
    auto found = index_.find(key);
    return found == index_.end() ? nullptr : &found->second->second;
  }

  [[nodiscard]] std::size_t size() const { return entries_.size(); }
  [[nodiscard]] std::size_t capacity() const { return capacity_; }
  [[nodiscard]] std::uint64_t hits() const { return hits_; }
  [[nodiscard]] std::uint64_t misses() const { return misses_; }
  [[nodiscard]] std::uint64_t evictions() const { return evictions_; }

  /// Drops every plan (counters are kept).
  void clear() {
    index_.clear();
    entries_.clear();
  }

 private:
  using entry = std::pair<plan_key, Plan>;
  std::size_t capacity_;
  std::list<entry> entries_;  // most recently used first
  std::unordered_map<plan_key, typename std::list<entry>::iterator, plan_key_hash> index_;
  std::uint64_t hits_ = 0, misses_ = 0, evictions_ = 0;
};

}  // namespace sinkmoe::blaslt
