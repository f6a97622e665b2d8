#pragma once
// cp.async: asynchronous 16-byte copies from global to shared memory, grouped and waited on,
// so that the next K/V tile streams in while the current one is multiplied (docs/design.md
// section 5; the multi-stage pipeline of the fused kernels).
//
// Protocol, as in PTX: each thread issues copies, closes them into a group with
// cp_async_commit_group(), and cp_async_wait_group<N>() returns once at most its N most recent
// groups are still in flight. The copies are only visible to other threads after the issuing
// thread's wait and a barrier (sync_block) that both sides pass.
//
// Emulation: a copy is recorded, not performed, and lands when the wait that retires its group
// runs (uncommitted or unwaited copies land when the thread returns). From its issue until then
// its destination is in flight: any access to it is an emulation_error, and the issue counts as
// a write for the race detector, so refilling a stage another warp may still read is reported.
// Once landed, the bytes are the issuing thread's write: other threads may read them after the
// next sync_block (detail/memory_checks.hpp). Addresses are checked: the destination must lie in
// the block's dynamic shared memory, both 16-byte aligned, the source inside the launch's
// tensors when it registered them.
//
// Device: inline PTX. CCCL 13.0's cuda::ptx covers only the bulk (TMA) copies; the toolkit's
// __pipeline_memcpy_async (cuda_pipeline_primitives.h) emits the same cp.async.cg but takes the
// zero-fill size as a template constant (a boundary row needs it at run time) and its wait has
// no memory clobber, so the compiler could hoist shared loads above it.

#include <cstddef>
#include <cstdint>
#include <sinkmoe/cuda/arch/config.hpp>
#include <sinkmoe/cuda/arch/shared_memory.hpp>
#include <sinkmoe/cuda/arch/site.hpp>
#include <utility>

#if !SINKMOE_ARCH_DEVICE
#include <sinkmoe/cuda/arch/detail/emulator.hpp>
#endif

namespace sinkmoe::arch {

#if !SINKMOE_ARCH_DEVICE
namespace emu {

/// Retires all but the `keep` youngest committed groups of the calling thread (their copies land
/// now); `primitive` names the call in the census, where a mutation may keep one group more.
inline void retire_groups(std::size_t keep, const char* primitive, const site& at) {
  block_state& b = current_block();
  thread_state& t = current_thread();
  b.stats->add_site(b.kernel, primitive, at);
  if (mutated(b, mutation::kind::retire_fewer, at)) ++keep;  // "retire one group fewer"
  while (t.committed.size() > keep) {
    perform(b, t, t.committed.front());
    t.committed.pop_front();
  }
}

/// Records one 16-byte copy (src null: zero fill) after checking its addresses.
inline void record_copy(void* smem_dst, const void* gmem_src, bool fill_zero, const site& at) {
  block_state& b = current_block();
  thread_state& t = current_thread();
  if (reinterpret_cast<std::uintptr_t>(gmem_src) % 16 != 0) {
    fail(where(b, t) + ": cp_async source " + describe(at) + " is not 16-byte aligned");
  }
  if (!fill_zero) global_access(b, t.rank, gmem_src, 16, false, at);
  shared_access(b, t.rank, smem_dst, 16, smem_access::async_issue, at);
  t.uncommitted.push_back(async_copy{static_cast<std::byte*>(smem_dst),
                                     fill_zero ? nullptr : static_cast<const std::byte*>(gmem_src),
                                     16, at});
}

}  // namespace emu
#endif

/// cp.async.cg.shared.global, 16 bytes: starts copying gmem_src[0..16) to smem_dst[0..16)
/// (both 16-byte aligned). Bypasses L1 (.cg): tiles are read once per block.
SINKMOE_ARCH_FN void cp_async(void* smem_dst, const void* gmem_src, site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(detail::smem_address(smem_dst)),
               "l"(__cvta_generic_to_global(gmem_src)));
#else
  emu::record_copy(smem_dst, gmem_src, false, at);
#endif
}

/// cp_async when `valid`, else writes 16 zero bytes to smem_dst without reading gmem_src
/// (src-size 0): loads of rows past a sequence end. gmem_src must still be a 16-byte aligned
/// global address (e.g. the tensor's base).
SINKMOE_ARCH_FN void cp_async_zfill(void* smem_dst, const void* gmem_src, bool valid,
                                    site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  asm volatile(
      "cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(detail::smem_address(smem_dst)),
      "l"(__cvta_generic_to_global(gmem_src)), "r"(valid ? 16 : 0));
#else
  emu::record_copy(smem_dst, gmem_src, !valid, at);
#endif
}

/// cp.async.commit_group: closes this thread's copies issued since the last commit into a group
/// (possibly empty, which keeps group counting uniform in a pipeline's tail).
SINKMOE_ARCH_FN void cp_async_commit_group() {
#if SINKMOE_ARCH_DEVICE
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#else
  emu::thread_state& t = emu::current_thread();
  t.committed.push_back(std::move(t.uncommitted));
  t.uncommitted.clear();
#endif
}

/// cp.async.wait_group N: returns once at most the N most recent committed groups of this
/// thread are still in flight (N = 0: all committed groups have landed).
template <int N>
SINKMOE_ARCH_FN void cp_async_wait_group(site at = site::current()) {
  static_assert(N >= 0, "cp_async_wait_group<N>: N >= 0");
#if SINKMOE_ARCH_DEVICE
  (void)at;
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#else
  emu::retire_groups(static_cast<std::size_t>(N), "cp_async_wait_group", at);
#endif
}

/// cp.async.wait_all: commits the pending copies and waits for every group of this thread.
SINKMOE_ARCH_FN void cp_async_wait_all(site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#else
  cp_async_commit_group();
  emu::retire_groups(0, "cp_async_wait_all", at);
#endif
}

}  // namespace sinkmoe::arch
