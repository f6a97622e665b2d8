// The host half of the cuBLASLt layer (include/sinkmoe/cuda/blaslt), without a GPU: the plan
// cache (LRU order, hit/miss/eviction counts, a throwing factory), plan keys (which fields and
// alignments tell plans apart), matmul_desc validation (each error names its field), the
// linear-layer helpers' GEMM descriptions and epilogue choices, the GELU math against finite
// differences and the erf form, cuBLAS status names (where the toolkit's headers are), and the
// GELU backward kernel under the host emulation (where Boost.Context is).
#if SINKMOE_TEST_HAS_BOOST_CONTEXT
#include <sinkmoe/cuda/arch/emulation.hpp>  // first: selects the emulated primitive layer
#include <sinkmoe/cuda/blaslt/gelu_backward_kernel.hpp>
#endif

#define BOOST_TEST_MODULE blaslt_host
#include <array>
#include <boost/test/unit_test.hpp>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <sinkmoe/cuda/blaslt/desc.hpp>
#include <sinkmoe/cuda/blaslt/gelu.hpp>
#include <sinkmoe/cuda/blaslt/linear_desc.hpp>
#include <sinkmoe/cuda/blaslt/plan_cache.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#if SINKMOE_TEST_HAS_CUBLAS_HEADERS
#include <sinkmoe/cuda/blaslt/status.hpp>
#endif

namespace blaslt = sinkmoe::blaslt;
namespace arch = sinkmoe::arch;
using arch::bf16;
using blaslt::dtype;
using blaslt::epilogue;
using blaslt::matmul_desc;
using sinkmoe::tensor_view;

namespace {

/// A predicate for BOOST_CHECK_EXCEPTION: a sinkmoe::error whose message contains every part.
struct message_has {
  std::vector<std::string> parts;
  bool operator()(const sinkmoe::error& e) const {
    const std::string what = e.what();
    for (const std::string& part : parts) {
      if (what.find(part) == std::string::npos) {
        BOOST_TEST_MESSAGE("message lacks '" << part << "': " << what);
        return false;
      }
    }
    return true;
  }
};

#define CHECK_ERROR(expr, ...) \
  BOOST_CHECK_EXCEPTION(expr, sinkmoe::error, (message_has{{__VA_ARGS__}}))

/// Device-like buffers: fake, 256-byte aligned addresses (validation never dereferences).
alignas(256) unsigned char g_arena[1 << 16];
const void* at(std::size_t byte_offset) { return g_arena + byte_offset; }
void* at_mut(std::size_t byte_offset) { return g_arena + byte_offset; }

/// A valid bf16 GEMM: 24 x 40 = (24 x 16) (16 x 40), D in f32, row-major, tight.
matmul_desc valid_desc() {
  matmul_desc d;
  d.m = 24;
  d.n = 40;
  d.k = 16;
  d.a_type = d.b_type = dtype::bf16;
  d.d_type = dtype::f32;
  d.a = at(0);
  d.lda = 16;
  d.b = at(4096);
  d.ldb = 40;
  d.d = at_mut(16384);
  d.ldd = 40;
  return d;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// plan_cache
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(plan_cache_behaviour)

blaslt::plan_key key_of_size(int m) {
  matmul_desc d = valid_desc();
  d.m = m;
  return blaslt::make_plan_key(d);
}

BOOST_AUTO_TEST_CASE(hits_misses_and_lru_eviction) {
  blaslt::plan_cache<int> cache(2);
  int builds = 0;
  auto factory_for = [&builds](int value) {
    return [&builds, value] {
      ++builds;
      return value;
    };
  };
  const auto k1 = key_of_size(1), k2 = key_of_size(2), k3 = key_of_size(3);

  BOOST_TEST(cache.get_or_create(k1, factory_for(10)) == 10);
  BOOST_TEST(cache.get_or_create(k2, factory_for(20)) == 20);
  BOOST_TEST(cache.misses() == 2u);
  BOOST_TEST(cache.hits() == 0u);
  // A hit returns the stored plan without building and makes k1 the most recent.
  BOOST_TEST(cache.get_or_create(k1, factory_for(99)) == 10);
  BOOST_TEST(builds == 2);
  BOOST_TEST(cache.hits() == 1u);
  // Full: k3 evicts the least recently used, k2.
  BOOST_TEST(cache.get_or_create(k3, factory_for(30)) == 30);
  BOOST_TEST(cache.size() == 2u);
  BOOST_TEST(cache.evictions() == 1u);
  BOOST_TEST(cache.peek(k2) == nullptr);
  BOOST_REQUIRE(cache.peek(k1) != nullptr);
  BOOST_TEST(*cache.peek(k1) == 10);
  BOOST_TEST(*cache.peek(k3) == 30);
  // k2 comes back as a miss, evicting k1 (k3 was used after k1).
  BOOST_TEST(cache.get_or_create(k2, factory_for(21)) == 21);
  BOOST_TEST(cache.peek(k1) == nullptr);
  BOOST_TEST(cache.peek(k3) != nullptr);
  BOOST_TEST(cache.misses() == 4u);
  BOOST_TEST(builds == 4);
  // peek counts nothing.
  BOOST_TEST(cache.hits() == 1u);
}

BOOST_AUTO_TEST_CASE(stored_plans_keep_their_address_until_evicted) {
  blaslt::plan_cache<std::vector<int>> cache(3);
  std::vector<int>& first = cache.get_or_create(key_of_size(1), [] { return std::vector{1, 2}; });
  for (int m = 2; m <= 3; ++m) cache.get_or_create(key_of_size(m), [m] { return std::vector{m}; });
  BOOST_TEST(&cache.get_or_create(key_of_size(1), [] { return std::vector<int>{}; }) == &first);
  BOOST_TEST(first.size() == 2u);
}

BOOST_AUTO_TEST_CASE(throwing_factory_leaves_the_cache_unchanged) {
  blaslt::plan_cache<int> cache(1);
  cache.get_or_create(key_of_size(1), [] { return 1; });
  BOOST_CHECK_THROW(cache.get_or_create(key_of_size(2),
                                        []() -> int { throw std::runtime_error("no algorithm"); }),
                    std::runtime_error);
  BOOST_TEST(cache.size() == 1u);
  BOOST_TEST(cache.evictions() == 0u);
  BOOST_REQUIRE(cache.peek(key_of_size(1)) != nullptr);
  BOOST_TEST(*cache.peek(key_of_size(1)) == 1);
}

BOOST_AUTO_TEST_CASE(clear_and_capacity) {
  CHECK_ERROR(blaslt::plan_cache<int>(0), "capacity = 0");
  blaslt::plan_cache<int> cache(4);
  for (int m = 1; m <= 6; ++m) cache.get_or_create(key_of_size(m), [m] { return m; });
  BOOST_TEST(cache.size() == 4u);
  BOOST_TEST(cache.evictions() == 2u);
  cache.clear();
  BOOST_TEST(cache.size() == 0u);
  BOOST_TEST(cache.peek(key_of_size(6)) == nullptr);
  BOOST_TEST(cache.misses() == 6u);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// plan_key
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(plan_keys)

BOOST_AUTO_TEST_CASE(alignment_of_pointers_and_batch_strides) {
  BOOST_TEST(blaslt::alignment_bytes(at(0), 0, dtype::bf16, 1) == 16u);
  BOOST_TEST(blaslt::alignment_bytes(at(2), 0, dtype::bf16, 1) == 2u);
  BOOST_TEST(blaslt::alignment_bytes(at(4), 0, dtype::f32, 1) == 4u);
  BOOST_TEST(blaslt::alignment_bytes(at(8), 0, dtype::f32, 1) == 8u);
  BOOST_TEST(blaslt::alignment_bytes(at(48), 0, dtype::f32, 1) == 16u);
  BOOST_TEST(blaslt::alignment_bytes(nullptr, 0, dtype::f16, 1) == 16u);
  // Batch b starts at base + b * stride: a stride of 3 bf16 elements leaves 2-byte alignment.
  BOOST_TEST(blaslt::alignment_bytes(at(0), 3, dtype::bf16, 2) == 2u);
  BOOST_TEST(blaslt::alignment_bytes(at(0), 4, dtype::bf16, 2) == 8u);
  BOOST_TEST(blaslt::alignment_bytes(at(0), 64, dtype::bf16, 2) == 16u);
  // One batch: the stride is never used.
  BOOST_TEST(blaslt::alignment_bytes(at(0), 3, dtype::bf16, 1) == 16u);
}

BOOST_AUTO_TEST_CASE(pointer_values_and_scalars_do_not_split_plans) {
  const matmul_desc base = valid_desc();
  matmul_desc moved = base;
  moved.a = at(1024);
  moved.b = at(2048 + 16);
  moved.d = at_mut(32768);
  moved.alpha = 0.5f;
  moved.beta = 2.0f;
  moved.c = at(40960);
  moved.ldc = base.ldd;
  const auto k1 = blaslt::make_plan_key(base), k2 = blaslt::make_plan_key(moved);
  BOOST_TEST((k1 == k2));
  BOOST_TEST(blaslt::plan_key_hash{}(k1) == blaslt::plan_key_hash{}(k2));
  // C == D in place, and no C at all, share D's layout.
  matmul_desc in_place = base;
  in_place.c = in_place.d;
  in_place.ldc = in_place.ldd;
  BOOST_TEST((blaslt::make_plan_key(in_place) == k1));
  // With beta == 0, C is never read: its layout is not checked and does not split plans.
  matmul_desc unread_c = base;
  unread_c.c = at(40960 + 2);
  unread_c.ldc = 0;
  BOOST_CHECK_NO_THROW(blaslt::validate(unread_c));
  BOOST_TEST((blaslt::make_plan_key(unread_c) == k1));
}

BOOST_AUTO_TEST_CASE(every_layout_field_splits_plans) {
  const matmul_desc base = valid_desc();
  const auto base_key = blaslt::make_plan_key(base);
  const std::vector<std::pair<const char*, std::function<void(matmul_desc&)>>> changes = {
      {"m", [](matmul_desc& d) { d.m = 25; }},
      {"n",
       [](matmul_desc& d) {
         d.n = 48;
         d.ldb = d.ldd = 48;
       }},
      {"k", [](matmul_desc& d) { d.k = 8; }},
      {"batch",
       [](matmul_desc& d) {
         d.batch = 2;
         d.batch_stride_a = 24 * 16;
         d.batch_stride_b = 16 * 40;
         d.batch_stride_d = 24 * 40;
       }},
      {"transpose_a",
       [](matmul_desc& d) {
         d.transpose_a = true;
         d.lda = 24;
       }},
      {"transpose_b",
       [](matmul_desc& d) {
         d.transpose_b = true;
         d.ldb = 16;
       }},
      {"types", [](matmul_desc& d) { d.a_type = d.b_type = dtype::f16; }},
      {"d_type", [](matmul_desc& d) { d.d_type = dtype::bf16; }},
      {"lda", [](matmul_desc& d) { d.lda = 32; }},
      {"ldb", [](matmul_desc& d) { d.ldb = 64; }},
      {"ldc",
       [](matmul_desc& d) {
         d.c = at(40960);
         d.ldc = 48;
         d.beta = 1.0f;
       }},
      {"ldd", [](matmul_desc& d) { d.ldd = 48; }},
      {"epilogue", [](matmul_desc& d) { d.epi = epilogue::gelu; }},
      {"alignment of a", [](matmul_desc& d) { d.a = at(2); }},
      {"alignment of b", [](matmul_desc& d) { d.b = at(4096 + 8); }},
      {"alignment of d", [](matmul_desc& d) { d.d = at_mut(16384 + 4); }},
  };
  for (const auto& [what, change] : changes) {
    matmul_desc changed = base;
    change(changed);
    BOOST_TEST_CONTEXT(what) {
      BOOST_CHECK_NO_THROW(blaslt::validate(changed));
      BOOST_TEST(!(blaslt::make_plan_key(changed) == base_key));
    }
  }
}

BOOST_AUTO_TEST_CASE(epilogue_pointers_split_plans_by_alignment_only) {
  matmul_desc base = valid_desc();
  base.d_type = dtype::bf16;
  base.epi = epilogue::gelu_aux_bias;
  base.bias = at(8192);
  base.bias_type = dtype::bf16;
  base.aux = at_mut(24576);
  base.ld_aux = 40;
  const auto key = blaslt::make_plan_key(base);
  matmul_desc moved = base;
  moved.bias = at(8192 + 64);
  moved.aux = at_mut(24576 + 256);
  BOOST_TEST((blaslt::make_plan_key(moved) == key));
  matmul_desc misaligned_bias = base;
  misaligned_bias.bias = at(8192 + 2);
  BOOST_TEST(!(blaslt::make_plan_key(misaligned_bias) == key));
  matmul_desc misaligned_aux = base;
  misaligned_aux.aux = at_mut(24576 + 2);
  BOOST_TEST(!(blaslt::make_plan_key(misaligned_aux) == key));
  matmul_desc wider_aux = base;
  wider_aux.ld_aux = 48;
  BOOST_TEST(!(blaslt::make_plan_key(wider_aux) == key));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// matmul_desc validation
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(desc_validation)

BOOST_AUTO_TEST_CASE(valid_descs_pass) {
  BOOST_CHECK_NO_THROW(blaslt::validate(valid_desc()));
  matmul_desc batched = valid_desc();
  batched.batch = 3;
  batched.batch_stride_a = 16;  // interleaved heads: batches may share rows
  batched.batch_stride_b = 0;   // one B for every batch (GQA-style broadcast)
  batched.batch_stride_d = 40;
  BOOST_CHECK_NO_THROW(blaslt::validate(batched));
  matmul_desc empty = valid_desc();
  empty.m = 0;
  empty.a = nullptr;
  empty.d = nullptr;
  BOOST_CHECK_NO_THROW(blaslt::validate(empty));
  matmul_desc no_inner = valid_desc();
  no_inner.k = 0;
  no_inner.a = nullptr;
  no_inner.b = nullptr;
  no_inner.lda = 0;
  BOOST_CHECK_NO_THROW(blaslt::validate(no_inner));
}

BOOST_AUTO_TEST_CASE(each_bad_field_is_named) {
  struct bad_case {
    std::function<void(matmul_desc&)> change;
    std::vector<std::string> message;
  };
  const std::vector<bad_case> cases = {
      {[](matmul_desc& d) { d.m = -1; }, {"matmul_desc.m = -1"}},
      {[](matmul_desc& d) { d.n = -2; }, {"matmul_desc.n = -2"}},
      {[](matmul_desc& d) { d.k = -3; }, {"matmul_desc.k = -3"}},
      {[](matmul_desc& d) { d.batch = -1; }, {"matmul_desc.batch = -1"}},
      {[](matmul_desc& d) { d.alpha = NAN; }, {"matmul_desc.alpha"}},
      {[](matmul_desc& d) { d.beta = INFINITY; }, {"matmul_desc.beta"}},
      {[](matmul_desc& d) { d.b_type = dtype::f16; }, {"matmul_desc.b_type = f16", "bf16"}},
      {[](matmul_desc& d) {
         d.a_type = d.b_type = dtype::f32;
         d.d_type = dtype::bf16;
       },
       {"matmul_desc.d_type = bf16"}},
      {[](matmul_desc& d) { d.lda = 15; }, {"matmul_desc.lda = 15", ">= 16"}},
      {[](matmul_desc& d) { d.transpose_a = true; }, {"matmul_desc.lda = 16", ">= 24"}},
      {[](matmul_desc& d) { d.ldb = 39; }, {"matmul_desc.ldb = 39", ">= 40"}},
      {[](matmul_desc& d) {
         d.transpose_b = true;
         d.ldb = 15;
       },
       {"matmul_desc.ldb = 15", ">= 16"}},
      {[](matmul_desc& d) { d.ldd = 8; }, {"matmul_desc.ldd = 8", ">= 40"}},
      {[](matmul_desc& d) { d.a = nullptr; }, {"matmul_desc.a is null", "24 x 16"}},
      {[](matmul_desc& d) { d.b = nullptr; }, {"matmul_desc.b is null"}},
      {[](matmul_desc& d) { d.d = nullptr; }, {"matmul_desc.d is null"}},
      {[](matmul_desc& d) { d.beta = 1.0f; }, {"matmul_desc.c is null", "beta = 1"}},
      {[](matmul_desc& d) {
         d.beta = 1.0f;
         d.c = at(40960);
         d.ldc = 20;
       },
       {"matmul_desc.ldc = 20"}},
      {[](matmul_desc& d) {
         d.c = d.d;
         d.ldc = 48;
         d.ldd = 40;
         d.beta = 1.0f;
       },
       {"matmul_desc.c == d", "ldc = 48"}},
      {[](matmul_desc& d) {
         d.batch = 2;
         d.batch_stride_a = -1;
       },
       {"matmul_desc.batch_stride_a = -1"}},
      {[](matmul_desc& d) { d.batch = 2; }, {"matmul_desc.batch_stride_d = 0", "batch = 2"}},
      {[](matmul_desc& d) {
         d.batch = 2;
         d.batch_stride_d = 960;
         d.epi = epilogue::gelu;
       },
       {"matmul_desc.epi = gelu", "batch = 2"}},
      {[](matmul_desc& d) { d.epi = epilogue::bias; }, {"matmul_desc.bias is null", "40 elements"}},
      {[](matmul_desc& d) { d.epi = epilogue::bgrada; },
       {"matmul_desc.bias is null", "24 elements"}},
      {[](matmul_desc& d) {  // n = 0: no GEMM runs, db (length m) would stay unwritten
         d.epi = epilogue::bgrada;
         d.bias = at(8192);
         d.bias_type = dtype::f32;
         d.n = 0;
         d.ldb = 0;
         d.ldd = 0;
       },
       {"matmul_desc.epi = bgrada", "24 elements", "output is empty"}},
      {[](matmul_desc& d) {
         d.epi = epilogue::bias;
         d.bias = at(8192);
         d.bias_type = dtype::bf16;
       },
       {"matmul_desc.bias_type = bf16", "d_type (f32)"}},
      {[](matmul_desc& d) { d.bias = at(8192); }, {"matmul_desc.bias is set", "none"}},
      {[](matmul_desc& d) { d.epi = epilogue::gelu_aux; }, {"matmul_desc.aux is null", "writes"}},
      {[](matmul_desc& d) {
         d.epi = epilogue::dgelu;
         d.aux = at_mut(24576);
         d.ld_aux = 44;
       },
       {"matmul_desc.ld_aux = 44", "multiple of 8"}},
      {[](matmul_desc& d) {
         d.epi = epilogue::dgelu;
         d.aux = at_mut(24576);
         d.ld_aux = 32;
       },
       {"matmul_desc.ld_aux = 32", ">= n = 40"}},
      {[](matmul_desc& d) { d.aux = at_mut(24576); }, {"matmul_desc.aux is set"}},
      {[](matmul_desc& d) {
         d.k = 0;
         d.beta = 1.0f;
         d.c = at(40960);
         d.ldc = 40;
       },
       {"matmul_desc.k = 0", "beta = 1"}},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    matmul_desc d = valid_desc();
    cases[i].change(d);
    BOOST_TEST_CONTEXT("case " << i) { CHECK_ERROR(blaslt::validate(d), cases[i].message); }
  }
}

BOOST_AUTO_TEST_CASE(describe_names_shapes_types_and_epilogue) {
  matmul_desc d = valid_desc();
  d.transpose_b = true;
  d.ldb = 16;
  d.epi = epilogue::bgradb;
  const std::string text = blaslt::describe(d);
  for (const char* part : {"m=24", "n=40", "k=16", "batch=1", "op(A)=N", "op(B)=T",
                           "bf16 x bf16 -> f32", "lda=16", "ldb=16", "ldd=40", "epilogue=bgradb"})
    BOOST_TEST(text.find(part) != std::string::npos, "'" << part << "' in " << text);
}

BOOST_AUTO_TEST_CASE(epilogue_roles) {
  BOOST_TEST(blaslt::bias_length(epilogue::bgrada, 3, 5) == 3);
  BOOST_TEST(blaslt::bias_length(epilogue::bgradb, 3, 5) == 5);
  BOOST_TEST(blaslt::bias_length(epilogue::dgelu_bgrad, 3, 5) == 5);
  BOOST_TEST(blaslt::bias_length(epilogue::gelu_aux_bias, 3, 5) == 5);
  for (epilogue e : {epilogue::bias, epilogue::gelu_bias, epilogue::gelu_aux_bias})
    BOOST_TEST((blaslt::reads_bias(e) && !blaslt::writes_bias(e)), blaslt::epilogue_name(e));
  for (epilogue e : {epilogue::dgelu_bgrad, epilogue::bgrada, epilogue::bgradb})
    BOOST_TEST((blaslt::writes_bias(e) && !blaslt::reads_bias(e)), blaslt::epilogue_name(e));
  for (epilogue e : {epilogue::gelu_aux, epilogue::gelu_aux_bias})
    BOOST_TEST((blaslt::writes_aux(e) && !blaslt::reads_aux(e)), blaslt::epilogue_name(e));
  for (epilogue e : {epilogue::dgelu, epilogue::dgelu_bgrad})
    BOOST_TEST((blaslt::reads_aux(e) && !blaslt::writes_aux(e)), blaslt::epilogue_name(e));
  for (epilogue e : {epilogue::none, epilogue::gelu})
    BOOST_TEST((!blaslt::reads_bias(e) && !blaslt::writes_bias(e) && !blaslt::reads_aux(e) &&
                !blaslt::writes_aux(e)),
               blaslt::epilogue_name(e));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Linear-layer helpers: the GEMMs they describe
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(linear_descs)

constexpr std::int64_t k_rows = 6, k_in = 16, k_out = 24;

template <class T, int R>
tensor_view<T, R> view_at(std::size_t byte_offset, std::array<sinkmoe::index_t, R> shape) {
  return {reinterpret_cast<T*>(g_arena + byte_offset), shape};
}

blaslt::linear_forward_args<bf16> forward_args(bool bias, blaslt::activation act, bool save_z) {
  blaslt::linear_forward_args<bf16> a;
  a.x = view_at<const bf16, 2>(0, {k_rows, k_in});
  a.weight = view_at<const bf16, 2>(1024, {k_out, k_in});
  if (bias) a.bias = view_at<const bf16, 1>(2048, {k_out});
  a.y = view_at<bf16, 2>(4096, {k_rows, k_out});
  a.act = act;
  if (save_z) a.pre_activation = view_at<bf16, 2>(8192, {k_rows, k_out});
  return a;
}

BOOST_AUTO_TEST_CASE(forward_is_x_times_weight_transposed) {
  const matmul_desc d =
      blaslt::linear_forward_desc(forward_args(true, blaslt::activation::none, false));
  BOOST_TEST(d.m == k_rows);
  BOOST_TEST(d.n == k_out);
  BOOST_TEST(d.k == k_in);
  BOOST_TEST(!d.transpose_a);
  BOOST_TEST(d.transpose_b);
  BOOST_TEST(d.lda == k_in);
  BOOST_TEST(d.ldb == k_in);
  BOOST_TEST(d.ldd == k_out);
  BOOST_TEST((d.a_type == dtype::bf16 && d.b_type == dtype::bf16 && d.d_type == dtype::bf16));
  BOOST_TEST(d.a == at(0));
  BOOST_TEST(d.b == at(1024));
  BOOST_TEST(d.bias == at(2048));
  BOOST_TEST((d.bias_type == dtype::bf16));
}

BOOST_AUTO_TEST_CASE(forward_epilogue_choice) {
  using blaslt::activation;
  struct choice {
    bool bias;
    activation act;
    bool save_z;
    epilogue expected;
  };
  for (const choice& c : {choice{false, activation::none, false, epilogue::none},
                          choice{true, activation::none, false, epilogue::bias},
                          choice{false, activation::gelu, false, epilogue::gelu},
                          choice{true, activation::gelu, false, epilogue::gelu_bias},
                          choice{false, activation::gelu, true, epilogue::gelu_aux},
                          choice{true, activation::gelu, true, epilogue::gelu_aux_bias}}) {
    const matmul_desc d = blaslt::linear_forward_desc(forward_args(c.bias, c.act, c.save_z));
    BOOST_TEST((d.epi == c.expected), blaslt::epilogue_name(d.epi)
                                          << " for bias " << c.bias << " save_z " << c.save_z);
    if (c.save_z) {
      BOOST_TEST(d.aux == at(8192));
      BOOST_TEST(d.ld_aux == k_out);
    }
  }
}

BOOST_AUTO_TEST_CASE(forward_errors_name_the_argument) {
  using blaslt::activation;
  auto a = forward_args(true, activation::none, false);
  a.weight.shape = {k_out, k_in + 1};
  CHECK_ERROR(blaslt::linear_forward_desc(a), "linear_forward_args.weight", "[24, 17]",
              "expected 16 columns");
  a = forward_args(true, activation::none, false);
  a.y.shape = {k_rows, k_out - 1};
  a.y.stride = {k_out - 1, 1};
  CHECK_ERROR(blaslt::linear_forward_desc(a), "linear_forward_args.y", "24 columns");
  a = forward_args(true, activation::none, false);
  a.bias.shape = {k_out + 1};
  CHECK_ERROR(blaslt::linear_forward_desc(a), "linear_forward_args.bias", "[24]");
  a = forward_args(false, activation::none, false);
  a.x.stride = {k_in, 2};
  CHECK_ERROR(blaslt::linear_forward_desc(a), "linear_forward_args.x", "unit stride");
  a = forward_args(false, activation::none, true);
  CHECK_ERROR(blaslt::linear_forward_desc(a), "linear_forward_args.pre_activation", "act is none");
  a = forward_args(false, activation::gelu, true);
  a.pre_activation.stride = {k_out + 2, 1};
  CHECK_ERROR(blaslt::linear_forward_desc(a), "linear_forward_args.pre_activation",
              "multiple of 8");
  a = forward_args(false, activation::none, false);
  a.x.data = nullptr;
  CHECK_ERROR(blaslt::linear_forward_desc(a), "linear_forward_args.x is null");
}

BOOST_AUTO_TEST_CASE(backward_steps_and_epilogues) {
  blaslt::linear_backward_args<bf16, float> a;
  a.grad_y = view_at<const bf16, 2>(0, {k_rows, k_out});
  a.x = view_at<const bf16, 2>(1024, {k_rows, k_in});
  a.weight = view_at<const bf16, 2>(2048, {k_out, k_in});
  a.act = blaslt::activation::gelu;
  a.pre_activation = view_at<const bf16, 2>(4096, {k_rows, k_out});
  a.grad_pre_activation = view_at<bf16, 2>(0, {k_rows, k_out});  // in place over grad_y
  a.grad_x = view_at<bf16, 2>(8192, {k_rows, k_in});
  a.grad_weight = view_at<float, 2>(12288, {k_out, k_in});
  a.grad_bias = view_at<float, 1>(16384, {k_out});
  a.input_pre_activation = view_at<const bf16, 2>(20480, {k_rows, k_in});
  a.input_grad_bias = view_at<bf16, 1>(24576, {k_in});
  const auto steps = blaslt::linear_backward_plan(a);

  BOOST_REQUIRE(steps.gelu_backward.has_value());
  BOOST_TEST(steps.gelu_backward->rows == k_rows);
  BOOST_TEST(steps.gelu_backward->cols == k_out);
  BOOST_TEST(steps.gelu_backward->grad_input == reinterpret_cast<bf16*>(g_arena));

  BOOST_REQUIRE(steps.weight_grad.has_value());
  const matmul_desc& w = *steps.weight_grad;  // dW = dZ^T X, db in the epilogue
  BOOST_TEST((w.m == k_out && w.n == k_in && w.k == k_rows));
  BOOST_TEST((w.transpose_a && !w.transpose_b));
  BOOST_TEST(w.a == at(0));  // dZ, not dY's original values: the GELU step wrote it there
  BOOST_TEST((w.epi == epilogue::bgrada));
  BOOST_TEST((w.d_type == dtype::f32 && w.bias_type == dtype::f32));
  BOOST_TEST(w.bias == at(16384));

  BOOST_REQUIRE(steps.input_grad.has_value());
  const matmul_desc& x = *steps.input_grad;  // dX = dZ W, earlier layer's GELU in the epilogue
  BOOST_TEST((x.m == k_rows && x.n == k_in && x.k == k_out));
  BOOST_TEST((!x.transpose_a && !x.transpose_b));
  BOOST_TEST((x.epi == epilogue::dgelu_bgrad));
  BOOST_TEST(x.aux == at(20480));
  BOOST_TEST(x.ld_aux == k_in);
  BOOST_TEST(x.bias == at(24576));
  BOOST_TEST((x.d_type == dtype::bf16 && x.bias_type == dtype::bf16));

  // Without the optional parts: no GELU step, plain GEMMs, dX only.
  blaslt::linear_backward_args<bf16> plain;
  plain.grad_y = a.grad_y;
  plain.x = a.x;
  plain.weight = a.weight;
  plain.grad_x = a.grad_x;
  const auto plain_steps = blaslt::linear_backward_plan(plain);
  BOOST_TEST(!plain_steps.gelu_backward.has_value());
  BOOST_TEST(!plain_steps.weight_grad.has_value());
  BOOST_REQUIRE(plain_steps.input_grad.has_value());
  BOOST_TEST((plain_steps.input_grad->epi == epilogue::none));
  BOOST_TEST(plain_steps.input_grad->a == at(0));
  // dgelu without the bias gradient.
  plain.input_pre_activation = a.input_pre_activation;
  BOOST_TEST((blaslt::linear_backward_plan(plain).input_grad->epi == epilogue::dgelu));
}

BOOST_AUTO_TEST_CASE(backward_errors_name_the_argument) {
  blaslt::linear_backward_args<bf16> base;
  base.grad_y = view_at<const bf16, 2>(0, {k_rows, k_out});
  base.x = view_at<const bf16, 2>(1024, {k_rows, k_in});
  base.weight = view_at<const bf16, 2>(2048, {k_out, k_in});
  base.grad_weight = view_at<bf16, 2>(12288, {k_out, k_in});

  auto a = base;
  a.grad_y.shape = {k_rows + 1, k_out};
  CHECK_ERROR(blaslt::linear_backward_plan(a), "linear_backward_args.grad_y", "6 rows");
  a = base;
  a.grad_bias = view_at<bf16, 1>(16384, {k_out});
  a.grad_weight = {};
  CHECK_ERROR(blaslt::linear_backward_plan(a), "linear_backward_args.grad_bias needs grad_weight");
  a = base;
  a.act = blaslt::activation::gelu;
  CHECK_ERROR(blaslt::linear_backward_plan(a), "linear_backward_args.pre_activation",
              "expected 6 rows");
  a = base;
  a.pre_activation = view_at<const bf16, 2>(4096, {k_rows, k_out});
  CHECK_ERROR(blaslt::linear_backward_plan(a), "act is none");
  a = base;
  a.input_pre_activation = view_at<const bf16, 2>(20480, {k_rows, k_in});
  CHECK_ERROR(blaslt::linear_backward_plan(a), "input_pre_activation needs grad_x");
  a = base;
  a.grad_x = view_at<bf16, 2>(8192, {k_rows, k_in});
  a.input_grad_bias = view_at<bf16, 1>(24576, {k_in});
  CHECK_ERROR(blaslt::linear_backward_plan(a), "input_grad_bias needs input_pre_activation");
  a = base;
  a.grad_weight.shape = {k_in, k_out};
  CHECK_ERROR(blaslt::linear_backward_plan(a), "linear_backward_args.grad_weight");
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// GELU (tanh form, as cuBLASLt's epilogues)
// ---------------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(gelu_derivative_matches_finite_differences_and_erf_form) {
  for (double x = -6.0; x <= 6.0; x += 0.125) {
    const float xf = static_cast<float>(x);
    // Central differences of the same tanh form in double.
    auto gelu_double = [](double v) {
      return 0.5 * v * (1.0 + std::tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
    };
    const double h = 1e-5;
    const double fd = (gelu_double(x + h) - gelu_double(x - h)) / (2 * h);
    BOOST_TEST(std::abs(blaslt::gelu_tanh_derivative(xf) - fd) <= 2e-5, "x = " << x);
    BOOST_TEST(std::abs(blaslt::gelu_tanh(xf) - gelu_double(x)) <= 2e-6 * (1 + std::abs(x)),
               "x = " << x);
    // The tanh form stays within 1e-3 of the exact (erf) GELU.
    const double exact = 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    BOOST_TEST(std::abs(blaslt::gelu_tanh(xf) - exact) <= 1e-3, "x = " << x);
  }
}

#if SINKMOE_TEST_HAS_CUBLAS_HEADERS
BOOST_AUTO_TEST_CASE(cublas_status_names_and_check_macro) {
  BOOST_TEST(blaslt::status_name(CUBLAS_STATUS_SUCCESS) == "CUBLAS_STATUS_SUCCESS");
  BOOST_TEST(blaslt::status_name(CUBLAS_STATUS_NOT_INITIALIZED) == "CUBLAS_STATUS_NOT_INITIALIZED");
  BOOST_TEST(blaslt::status_name(CUBLAS_STATUS_ALLOC_FAILED) == "CUBLAS_STATUS_ALLOC_FAILED");
  BOOST_TEST(blaslt::status_name(CUBLAS_STATUS_INVALID_VALUE) == "CUBLAS_STATUS_INVALID_VALUE");
  BOOST_TEST(blaslt::status_name(CUBLAS_STATUS_ARCH_MISMATCH) == "CUBLAS_STATUS_ARCH_MISMATCH");
  BOOST_TEST(blaslt::status_name(CUBLAS_STATUS_MAPPING_ERROR) == "CUBLAS_STATUS_MAPPING_ERROR");
  BOOST_TEST(blaslt::status_name(CUBLAS_STATUS_EXECUTION_FAILED) ==
             "CUBLAS_STATUS_EXECUTION_FAILED");
  BOOST_TEST(blaslt::status_name(CUBLAS_STATUS_INTERNAL_ERROR) == "CUBLAS_STATUS_INTERNAL_ERROR");
  BOOST_TEST(blaslt::status_name(CUBLAS_STATUS_NOT_SUPPORTED) == "CUBLAS_STATUS_NOT_SUPPORTED");
  BOOST_TEST(blaslt::status_name(CUBLAS_STATUS_LICENSE_ERROR) == "CUBLAS_STATUS_LICENSE_ERROR");
  BOOST_TEST(blaslt::status_name(static_cast<cublasStatus_t>(999)) == "unknown cublasStatus_t");

  BOOST_CHECK_NO_THROW(SINKMOE_CUBLAS_CHECK(CUBLAS_STATUS_SUCCESS, "m=1"));
  const matmul_desc d = valid_desc();
  CHECK_ERROR(SINKMOE_CUBLAS_CHECK(CUBLAS_STATUS_NOT_SUPPORTED, blaslt::describe(d)),
              "CUBLAS_STATUS_NOT_SUPPORTED", "CUBLAS_STATUS_NOT_SUPPORTED (15)", "m=24 n=40 k=16",
              "test_blaslt_host.cpp");
}
#endif

// ---------------------------------------------------------------------------------------------
// The GELU backward kernel under the host emulation
// ---------------------------------------------------------------------------------------------

#if SINKMOE_TEST_HAS_BOOST_CONTEXT
BOOST_AUTO_TEST_CASE(gelu_backward_kernel_emulated) {
  // A strided 5 x 37 block (row strides 40, 48 and 37), fewer threads than elements so that the
  // grid-stride loop wraps; padding between rows must stay untouched.
  constexpr int rows = 5, cols = 37;
  constexpr std::int64_t ld_dy = 40, ld_z = 48, ld_out = 37;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<bf16> dy(rows * ld_dy), z(rows * ld_z);
  for (auto& v : dy) v = arch::from_float<bf16>(normal(rng));
  for (auto& v : z) v = arch::from_float<bf16>(normal(rng));
  const bf16 sentinel = arch::from_float<bf16>(-1234.0f);
  std::vector<bf16> out(rows * ld_out + 3, sentinel);

  blaslt::gelu_backward_params<bf16> p;
  p.rows = rows;
  p.cols = cols;
  p.grad_output = dy.data();
  p.ld_grad_output = ld_dy;
  p.pre_activation = z.data();
  p.ld_pre_activation = ld_z;
  p.grad_input = out.data();
  p.ld_grad_input = ld_out;
  arch::emulated_launch(arch::index3(2), arch::index3(32), 0, blaslt::gelu_backward_kernel{}, p);

  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const double zd = arch::to_float(z[r * ld_z + c]);
      const double t = std::tanh(0.7978845608028654 * (zd + 0.044715 * zd * zd * zd));
      const double derivative = 0.5 * (1 + t) + 0.5 * zd * (1 - t * t) * 0.7978845608028654 *
                                                    (1 + 3 * 0.044715 * zd * zd);
      const double expected = arch::to_float(dy[r * ld_dy + c]) * derivative;
      const double got = arch::to_float(out[r * ld_out + c]);
      // One bf16 rounding of the result (2^-8 relative) plus fp32 evaluation.
      BOOST_TEST(std::abs(got - expected) <= 4e-3 * std::abs(expected) + 1e-6,
                 "row " << r << " col " << c << ": " << got << " vs " << expected);
    }
  for (int i = rows * ld_out; i < rows * ld_out + 3; ++i)
    BOOST_TEST(arch::to_bits(out[i]) == arch::to_bits(sentinel), "element " << i << " written");

  // In place over dy (grad_input == grad_output).
  std::vector<bf16> in_place = dy;
  p.grad_output = in_place.data();
  p.grad_input = in_place.data();
  p.ld_grad_input = ld_dy;
  arch::emulated_launch(arch::index3(3), arch::index3(64), 0, blaslt::gelu_backward_kernel{}, p);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      BOOST_TEST(arch::to_bits(in_place[r * ld_dy + c]) == arch::to_bits(out[r * ld_out + c]),
                 "row " << r << " col " << c);
  for (int c = cols; c < ld_dy; ++c)  // the padding of dy's rows keeps dy's values
    BOOST_TEST(arch::to_bits(in_place[c]) == arch::to_bits(dy[c]));
}
#endif
