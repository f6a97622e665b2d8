// nvcc compile check of the device implementation of the primitive layer (docs/design.md section
// 6): the same tiled GEMM that test_arch_emulation runs through the host emulation is
// instantiated here as real __global__ functions for every architecture in
// CMAKE_CUDA_ARCHITECTURES (sm_90a and sm_80), so ptxas assembles its mma.sync, ldmatrix and
// cp.async; a second kernel touches every remaining primitive once. The program launches
// nothing and runs on machines without a GPU.
#include <cstdint>
#include <sinkmoe/cuda/arch/arch.hpp>

#include "support/arch_gemm.hpp"

namespace {

namespace arch = sinkmoe::arch;

/// Calls each primitive the GEMM does not: shuffles, reductions, warp barrier, the other
/// ldmatrix shapes, zero-filling copies, conversions.
struct every_primitive_kernel {
  template <class T>
  SINKMOE_DEVICE void operator()(const T* in, float* out, int valid_rows) const {
    T* tile = arch::dynamic_smem<T>();
    const int lane = arch::lane_id();
    const int rank = arch::thread_rank();
    arch::cp_async_zfill(tile + 8 * rank, in + 8 * rank, rank < valid_rows);
    arch::cp_async_wait_all();
    arch::sync_block();
    std::uint32_t x1[1], x2[2], x1t[1], x2t[2];
    const T* row = tile + 8 * (lane % 16);
    arch::ldmatrix_x1(x1, row);
    arch::ldmatrix_x2(x2, row);
    arch::ldmatrix_x1_trans(x1t, row);
    arch::ldmatrix_x2_trans(x2t, row);
    float v = arch::unpack<T>(x1[0] ^ x2[1] ^ x1t[0] ^ x2t[1], 0);
    v = arch::warp_reduce_sum(v) + arch::warp_reduce_max<4>(v);
    v += arch::shfl_down(v, 1u) + arch::shfl_idx(v, 0) + arch::shfl_xor<8>(v, 3);
    const int as_int = arch::warp_reduce_sum<16>(static_cast<int>(v));
    arch::sync_warp();
    const arch::index3 block = arch::block_index();
    const arch::index3 thread = arch::thread_index();
    out[arch::grid_dim().x * block.x + arch::block_dim().x * thread.y + arch::warp_id()] =
        v + static_cast<float>(as_int) + arch::to_float(arch::from_float<T>(v)) +
        arch::unpack<T>(arch::pack2<T>(v, 1.0f), 1);
  }
};

}  // namespace

int main() {
  using sinkmoe::arch::bf16;
  using sinkmoe::arch::fp16;
  using sinkmoe::testing::tiled_gemm_kernel;
  // Taking the addresses instantiates the kernels (device code for every target architecture)
  // and the host-side launch helper, without launching anything.
  const void* kernels[] = {
      reinterpret_cast<const void*>(arch::entry_point<tiled_gemm_kernel<bf16>, const bf16*,
                                                      const bf16*, float*, int, int, int>()),
      reinterpret_cast<const void*>(arch::entry_point<tiled_gemm_kernel<fp16>, const fp16*,
                                                      const fp16*, float*, int, int, int>()),
      reinterpret_cast<const void*>(
          arch::entry_point<every_primitive_kernel, const bf16*, float*, int>()),
      reinterpret_cast<const void*>(
          arch::entry_point<every_primitive_kernel, const fp16*, float*, int>()),
      reinterpret_cast<const void*>(
          &arch::launch<tiled_gemm_kernel<bf16>, const bf16*, const bf16*, float*, int, int, int>),
  };
  for (const void* kernel : kernels) {
    if (kernel == nullptr) return 1;
  }
  return 0;
}
