#pragma once
// Plain loads and stores of shared and global memory (docs/emulation.md). Kernel code reads and
// writes memory only through these (and ldmatrix / cp.async), never by dereferencing a pointer,
// so that the host emulation can check every access:
//   load_shared / store_shared  races between threads (no barrier between two conflicting
//                               accesses), cp.async destinations still in flight, reads of
//                               bytes nobody wrote, bounds and alignment of the shared window
//   load_global / store_global  alignment to the access width (a misaligned 4- or 16-byte
//                               access faults on the GPU, x86 does not care), bounds against the
//                               tensors the launch registered, stores into inputs
// T is any trivially copyable type of 1, 2, 4, 8 or 16 bytes (a scalar, a packed pair, a
// 16-byte vector chunk); the address must be aligned to sizeof(T).
//
// Device: a plain dereference, so the generated code is the same as writing *p.

#include <cstring>
#include <sinkmoe/cuda/arch/config.hpp>
#include <sinkmoe/cuda/arch/site.hpp>
#include <type_traits>

#if !SINKMOE_ARCH_DEVICE
#include <sinkmoe/cuda/arch/detail/emulator.hpp>
#endif

namespace sinkmoe::arch {

/// The value types of a plain access.
template <class T>
concept plain_word = std::is_trivially_copyable_v<T> &&
    (sizeof(T) == 1 || sizeof(T) == 2 || sizeof(T) == 4 || sizeof(T) == 8 || sizeof(T) == 16);

/// *p for p in the block's dynamic shared memory.
template <plain_word T>
SINKMOE_ARCH_FN T load_shared(const T* p, site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  return *p;
#else
  emu::shared_access(emu::current_block(), emu::current_thread().rank, p, sizeof(T),
                     emu::smem_access::read, at);
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
#endif
}

/// *p = value for p in the block's dynamic shared memory.
template <plain_word T>
SINKMOE_ARCH_FN void store_shared(T* p, const std::type_identity_t<T>& value,
                                  site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  *p = value;
#else
  emu::shared_access(emu::current_block(), emu::current_thread().rank, p, sizeof(T),
                     emu::smem_access::write, at);
  std::memcpy(p, &value, sizeof(T));
#endif
}

/// *p for p in global memory.
template <plain_word T>
SINKMOE_ARCH_FN T load_global(const T* p, site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  return *p;
#else
  emu::global_access(emu::current_block(), emu::current_thread().rank, p, sizeof(T), false, at);
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
#endif
}

/// *p = value for p in global memory.
template <plain_word T>
SINKMOE_ARCH_FN void store_global(T* p, const std::type_identity_t<T>& value,
                                  site at = site::current()) {
#if SINKMOE_ARCH_DEVICE
  (void)at;
  *p = value;
#else
  emu::global_access(emu::current_block(), emu::current_thread().rank, p, sizeof(T), true, at);
  std::memcpy(p, &value, sizeof(T));
#endif
}

}  // namespace sinkmoe::arch
