#pragma once
// The runtime of the host emulation of the primitive layer (design.md section 6): one
// Boost.Context fiber per thread of a block, run by one scheduler thread in a fixed round-robin
// order, with a barrier per block, a barrier per warp, and an exchange buffer per warp through
// which shuffles, ldmatrix and mma.sync fragments travel. Tests only; g++ only.
//
// Scheduling. The threads of a block run one at a time, in rank order, each until it blocks at
// a barrier or exits; a blocked thread is not resumed until its barrier has completed. The
// blocks of a grid run one after another, in linear order (x fastest). The order is therefore
// fully deterministic: the same kernel and inputs always interleave the same way.
//
// Barriers count live threads: a thread that has returned no longer holds up sync_block, as on
// the hardware. Warp data collectives (shuffle, ldmatrix, mma) need all 32 lanes of a full warp,
// which is the only way this layer issues them (full member mask).
//
// Checks that a GPU would not report, thrown as arch::emulation_error from the launch:
// deadlock (some threads wait at sync_block while others of the same warp wait at a warp
// collective, or nobody can run), lanes of one warp meeting in different collectives, a lane
// exiting while its warp waits in a data collective, ldmatrix/cp.async addresses outside the
// dynamic shared memory or misaligned, a launch the hardware would refuse.
//
// Dynamic shared memory starts filled with 0xff bytes (NaN for bf16, fp16 and float) so that a
// read of memory nobody wrote shows up in the results.

#if defined(__CUDACC__)
#error \
    "sinkmoe/cuda/arch/detail/emulator.hpp is the g++ host emulation; do not include it under nvcc"
#endif

#include <algorithm>
#include <array>
#include <boost/context/fiber.hpp>
#include <boost/context/protected_fixedsize_stack.hpp>
#include <boost/context/stack_context.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <new>
#include <sinkmoe/cuda/arch/geometry.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace sinkmoe::arch {

/// A kernel did something the emulation can prove wrong (deadlock, divergent collective, bad
/// shared-memory address, invalid launch). Thrown by emulated_launch.
class emulation_error : public std::logic_error {
 public:
  explicit emulation_error(const std::string& what)
      : std::logic_error("sinkmoe arch emulation: " + what) {}
};

/// What one emulated launch did; the counts make emulation throughput measurable.
struct emulation_stats {
  std::uint64_t blocks = 0;            ///< blocks run
  std::uint64_t threads = 0;           ///< threads run (blocks x threads per block)
  std::uint64_t block_barriers = 0;    ///< completed sync_block phases (per block)
  std::uint64_t warp_syncs = 0;        ///< completed sync_warp phases (per warp)
  std::uint64_t warp_collectives = 0;  ///< completed shuffles, ldmatrix and mma (per warp)
  std::uint64_t mma = 0;               ///< completed mma.sync m16n8k16 (per warp)
  std::uint64_t resumes = 0;           ///< fiber resumptions by the scheduler
};

namespace emu {

/// The warp-level operation a lane is waiting in; lanes of a warp must meet in the same one.
enum class warp_op : std::uint8_t {
  none,
  sync,
  shfl_xor,
  shfl_down,
  shfl_idx,
  ldmatrix_x1,
  ldmatrix_x2,
  ldmatrix_x4,
  ldmatrix_x1_trans,
  ldmatrix_x2_trans,
  ldmatrix_x4_trans,
  mma_bf16,
  mma_fp16,
};

/// Printable name of a warp operation (for error messages).
inline const char* name(warp_op op) {
  switch (op) {
    case warp_op::none:
      return "none";
    case warp_op::sync:
      return "sync_warp";
    case warp_op::shfl_xor:
      return "shfl_xor";
    case warp_op::shfl_down:
      return "shfl_down";
    case warp_op::shfl_idx:
      return "shfl_idx";
    case warp_op::ldmatrix_x1:
      return "ldmatrix_x1";
    case warp_op::ldmatrix_x2:
      return "ldmatrix_x2";
    case warp_op::ldmatrix_x4:
      return "ldmatrix_x4";
    case warp_op::ldmatrix_x1_trans:
      return "ldmatrix_x1_trans";
    case warp_op::ldmatrix_x2_trans:
      return "ldmatrix_x2_trans";
    case warp_op::ldmatrix_x4_trans:
      return "ldmatrix_x4_trans";
    case warp_op::mma_bf16:
      return "mma_m16n8k16<bf16>";
    case warp_op::mma_fp16:
      return "mma_m16n8k16<fp16>";
  }
  return "?";
}

/// Bytes per lane in a warp exchange slot (the largest payload is an mma operand set: 40).
inline constexpr std::size_t k_slot_bytes = 48;

/// One lane's contribution to, or result of, a warp collective.
struct alignas(16) exchange_slot {
  std::byte bytes[k_slot_bytes];
};

/// Per-warp barrier and exchange buffers. The buffers alternate with the barrier generation:
/// a lane can write generation g + 2's buffer only after every lane has arrived at g + 1, that
/// is, after every lane has read its result of g.
struct warp_state {
  unsigned size = 0;  ///< lanes in this warp (32, or fewer in a partial last warp)
  unsigned live = 0;  ///< lanes that have not returned
  unsigned arrived = 0;
  std::uint64_t generation = 0;
  warp_op op = warp_op::none;
  std::array<std::array<exchange_slot, k_warp_size>, 2> in{};
  std::array<std::array<exchange_slot, k_warp_size>, 2> out{};
};

/// A cp.async copy not yet performed: performed at the cp_async_wait that retires its group.
struct async_copy {
  std::byte* dst;
  const std::byte* src;  ///< null: zero fill
  unsigned bytes;
};

/// One emulated thread.
struct thread_state {
  index3 thread_idx;
  unsigned rank = 0;
  unsigned lane = 0;
  unsigned warp = 0;
  boost::context::fiber fiber;                  ///< the thread, while it is suspended
  boost::context::fiber scheduler;              ///< the scheduler, while the thread runs
  const std::uint64_t* wait_counter = nullptr;  ///< blocked until *wait_counter != wait_value
  std::uint64_t wait_value = 0;
  bool waits_for_block = false;  ///< blocked in sync_block (else in a warp operation)
  bool done = false;
  std::vector<async_copy> uncommitted;            ///< cp.async issued since the last commit
  std::deque<std::vector<async_copy>> committed;  ///< committed groups, oldest first
};

/// One emulated block: its geometry, shared memory, barrier, warps and threads.
struct block_state {
  index3 block_idx;
  index3 block_dim;
  index3 grid_dim;
  std::byte* smem = nullptr;
  std::size_t smem_bytes = 0;
  unsigned live = 0;
  unsigned arrived = 0;
  std::uint64_t generation = 0;
  std::vector<warp_state> warps;
  std::vector<thread_state> threads;
  emulation_stats* stats = nullptr;
  std::exception_ptr failure;
};

inline thread_local block_state* t_block = nullptr;
inline thread_local thread_state* t_thread = nullptr;

[[noreturn]] inline void fail(const std::string& what) { throw emulation_error(what); }

/// The block of the calling emulated thread.
inline block_state& current_block() {
  if (t_block == nullptr) fail("an arch primitive was called outside emulated_launch");
  return *t_block;
}

/// The calling emulated thread.
inline thread_state& current_thread() {
  if (t_thread == nullptr) fail("an arch primitive was called outside emulated_launch");
  return *t_thread;
}

/// "block (x,y,z) thread r (warp w lane l)", for messages.
inline std::string where(const block_state& b, const thread_state& t) {
  std::ostringstream s;
  s << "block (" << b.block_idx.x << ',' << b.block_idx.y << ',' << b.block_idx.z << ") thread "
    << t.rank << " (warp " << t.warp << " lane " << t.lane << ')';
  return s.str();
}

/// Gives control back to the scheduler until it resumes this thread.
inline void suspend(thread_state& t) { t.scheduler = std::move(t.scheduler).resume(); }

/// Blocks the calling thread until *counter changes (a barrier generation).
inline void wait_for(thread_state& t, const std::uint64_t& counter, bool block_barrier) {
  t.wait_counter = &counter;
  t.wait_value = counter;
  t.waits_for_block = block_barrier;
  suspend(t);
}

/// sync_block: returns when every live thread of the block has arrived.
inline void block_barrier() {
  block_state& b = current_block();
  thread_state& t = current_thread();
  if (++b.arrived == b.live) {
    b.arrived = 0;
    ++b.generation;
    ++b.stats->block_barriers;
    return;
  }
  wait_for(t, b.generation, true);
}

/// Joins the warp barrier as operation `op`; checks that the lanes already waiting are in the
/// same operation. Returns true for the lane that completes the barrier (the last to arrive).
inline bool warp_arrive(block_state& b, thread_state& t, warp_state& w, warp_op op) {
  if (w.arrived == 0) {
    w.op = op;
  } else if (w.op != op) {
    fail(where(b, t) + " calls " + name(op) + " while other lanes of its warp wait in " +
         name(w.op) + " (divergent warp collective)");
  }
  return ++w.arrived == w.live;
}

/// Releases the lanes waiting at the warp barrier.
inline void warp_release(warp_state& w) {
  w.arrived = 0;
  w.op = warp_op::none;
  ++w.generation;
}

/// sync_warp: returns when every live lane of the calling warp has arrived.
inline void warp_barrier() {
  block_state& b = current_block();
  thread_state& t = current_thread();
  warp_state& w = b.warps[t.warp];
  if (warp_arrive(b, t, w, warp_op::sync)) {
    warp_release(w);
    ++b.stats->warp_syncs;
    return;
  }
  wait_for(t, w.generation, false);
}

/// A warp data collective: every lane of the (full) warp contributes `in`; the last lane to
/// arrive runs complete(ins, outs) over all 32 contributions, writing each lane's result; each
/// lane gets back its own. In and Out are trivially copyable and fit an exchange slot.
template <class Out, class In, class Complete>
Out warp_collective(warp_op op, const In& in, Complete&& complete) {
  static_assert(std::is_trivially_copyable_v<In> && sizeof(In) <= k_slot_bytes);
  static_assert(std::is_trivially_copyable_v<Out> && sizeof(Out) <= k_slot_bytes);
  block_state& b = current_block();
  thread_state& t = current_thread();
  warp_state& w = b.warps[t.warp];
  if (w.size != k_warp_size || w.live != k_warp_size) {
    fail(where(b, t) + " calls " + name(op) + " but its warp has only " + std::to_string(w.live) +
         " live lanes of " + std::to_string(w.size) + " (warp collectives need all 32)");
  }
  const unsigned parity = static_cast<unsigned>(w.generation & 1u);
  std::memcpy(w.in[parity][t.lane].bytes, &in, sizeof(In));
  if (warp_arrive(b, t, w, op)) {
    std::array<In, k_warp_size> ins;
    std::array<Out, k_warp_size> outs;
    for (int lane = 0; lane < k_warp_size; ++lane)
      std::memcpy(&ins[lane], w.in[parity][lane].bytes, sizeof(In));
    complete(ins, outs);
    for (int lane = 0; lane < k_warp_size; ++lane)
      std::memcpy(w.out[parity][lane].bytes, &outs[lane], sizeof(Out));
    warp_release(w);
    ++b.stats->warp_collectives;
  } else {
    wait_for(t, w.generation, false);
  }
  Out result;
  std::memcpy(&result, w.out[parity][t.lane].bytes, sizeof(Out));
  return result;
}

/// Throws unless [p, p + bytes) lies in the block's dynamic shared memory and p is aligned.
inline void check_smem_range(const block_state& b, const thread_state& t, const void* p,
                             std::size_t bytes, std::size_t alignment, const char* what) {
  const auto* c = static_cast<const std::byte*>(p);
  if (c < b.smem || c + bytes > b.smem + b.smem_bytes) {
    std::ostringstream s;
    s << where(b, t) << ": " << what << " address " << p << " (+" << bytes
      << " bytes) is outside the dynamic shared memory [" << static_cast<const void*>(b.smem)
      << ", +" << b.smem_bytes << ')';
    fail(s.str());
  }
  if (reinterpret_cast<std::uintptr_t>(p) % alignment != 0) {
    std::ostringstream s;
    s << where(b, t) << ": " << what << " address " << p << " is not " << alignment
      << "-byte aligned";
    fail(s.str());
  }
}

/// Performs one group of deferred cp.async copies.
inline void perform(const std::vector<async_copy>& group) {
  for (const async_copy& c : group) {
    if (c.src != nullptr) {
      std::memcpy(c.dst, c.src, c.bytes);
    } else {
      std::memset(c.dst, 0, c.bytes);
    }
  }
}

/// Bookkeeping when a thread returns: it stops counting at the barriers; a barrier that only
/// waited for it completes.
inline void on_exit(block_state& b, thread_state& t) {
  for (auto& group : t.committed) perform(group);  // in-flight copies still land
  perform(t.uncommitted);
  t.committed.clear();
  t.uncommitted.clear();
  --b.live;
  if (b.arrived > 0 && b.arrived == b.live) {
    b.arrived = 0;
    ++b.generation;
    ++b.stats->block_barriers;
  }
  warp_state& w = b.warps[t.warp];
  --w.live;
  if (w.arrived > 0) {
    if (w.op != warp_op::sync) {
      fail(where(b, t) + " returned while the other lanes of its warp wait in " + name(w.op));
    }
    if (w.arrived == w.live) {
      warp_release(w);
      ++b.stats->warp_syncs;
    }
  }
}

/// Describes who waits where, when no thread of a block can run.
inline std::string deadlock_report(const block_state& b) {
  std::ostringstream s;
  s << "deadlock in block (" << b.block_idx.x << ',' << b.block_idx.y << ',' << b.block_idx.z
    << "): no thread can run;";
  for (std::size_t wi = 0; wi < b.warps.size(); ++wi) {
    unsigned at_block = 0, at_warp = 0, exited = 0;
    for (const thread_state& t : b.threads) {
      if (t.warp != wi) continue;
      if (t.done) {
        ++exited;
      } else if (t.waits_for_block) {
        ++at_block;
      } else {
        ++at_warp;
      }
    }
    s << " warp " << wi << ": " << at_block << " lanes in sync_block, " << at_warp << " lanes in "
      << name(b.warps[wi].op) << ", " << exited << " returned;";
  }
  return s.str();
}

/// Stacks for the fibers of one launch, allocated once (mmap with a guard page, so a kernel
/// that overflows its fiber stack faults instead of corrupting memory) and reused by every block.
class stack_pool {
 public:
  explicit stack_pool(std::size_t bytes, std::size_t count) : allocator_(bytes) {
    free_.reserve(count);
  }
  stack_pool(const stack_pool&) = delete;
  stack_pool& operator=(const stack_pool&) = delete;
  ~stack_pool() {
    for (auto& stack : free_) allocator_.deallocate(stack);
  }
  boost::context::stack_context take() {
    if (free_.empty()) return allocator_.allocate();
    const boost::context::stack_context stack = free_.back();
    free_.pop_back();
    return stack;
  }
  void give(const boost::context::stack_context& stack) noexcept { free_.push_back(stack); }

 private:
  boost::context::protected_fixedsize_stack allocator_;
  std::vector<boost::context::stack_context> free_;
};

/// Boost.Context StackAllocator handing out stacks of a stack_pool.
struct pooled_stack {
  stack_pool* pool;
  boost::context::stack_context allocate() { return pool->take(); }
  void deallocate(boost::context::stack_context& stack) noexcept { pool->give(stack); }
};

/// Type-erased kernel invocation: call(context) runs the kernel body for the current thread.
struct kernel_ref {
  void* context;
  void (*call)(void*);
};

/// Runs one block to completion (or failure) with fibers from `pool`.
inline void run_block(block_state& b, kernel_ref kernel, stack_pool& pool) {
  namespace ctx = boost::context;
  const unsigned n = b.block_dim.volume();
  b.live = n;
  b.warps.assign((n + k_warp_size - 1) / k_warp_size, warp_state{});
  for (unsigned wi = 0; wi < b.warps.size(); ++wi) {
    b.warps[wi].size = std::min<unsigned>(k_warp_size, n - wi * k_warp_size);
    b.warps[wi].live = b.warps[wi].size;
  }
  b.threads.clear();
  b.threads.resize(n);
  for (unsigned r = 0; r < n; ++r) {
    thread_state& t = b.threads[r];
    t.rank = r;
    t.lane = r % k_warp_size;
    t.warp = r / k_warp_size;
    t.thread_idx = index3(r % b.block_dim.x, (r / b.block_dim.x) % b.block_dim.y,
                          r / (b.block_dim.x * b.block_dim.y));
    t.fiber = ctx::fiber(std::allocator_arg, pooled_stack{&pool},
                         [&b, &t, kernel](ctx::fiber&& scheduler) {
                           t.scheduler = std::move(scheduler);
                           try {
                             kernel.call(kernel.context);
                           } catch (const ctx::detail::forced_unwind&) {
                             throw;  // Boost.Context unwinding an abandoned fiber
                           } catch (...) {
                             if (!b.failure) b.failure = std::current_exception();
                           }
                           return std::move(t.scheduler);
                         });
  }

  unsigned running = n;
  while (running > 0 && !b.failure) {
    bool progressed = false;
    for (thread_state& t : b.threads) {
      if (t.done) continue;
      if (t.wait_counter != nullptr) {
        if (*t.wait_counter == t.wait_value) continue;  // its barrier has not completed
        t.wait_counter = nullptr;
      }
      t_thread = &t;
      t.fiber = std::move(t.fiber).resume();
      t_thread = nullptr;
      ++b.stats->resumes;
      progressed = true;
      if (!t.fiber) {
        t.done = true;
        --running;
        if (!b.failure) {
          try {
            on_exit(b, t);
          } catch (...) {
            b.failure = std::current_exception();
          }
        }
      }
      if (b.failure) break;
    }
    if (!progressed && running > 0 && !b.failure) {
      b.failure = std::make_exception_ptr(emulation_error(deadlock_report(b)));
    }
  }
  // Abandoned fibers (after a failure) are unwound here, returning their stacks to the pool.
  for (thread_state& t : b.threads) t.fiber = ctx::fiber{};
  b.threads.clear();
  if (b.failure) std::rethrow_exception(b.failure);
}

/// Rejects launches the hardware would refuse.
inline void check_launch(index3 grid, index3 block, std::size_t smem_bytes,
                         std::size_t max_smem_bytes) {
  std::ostringstream s;
  if (grid.volume() == 0 || grid.y > 65535 || grid.z > 65535) {
    s << "invalid grid (" << grid.x << ',' << grid.y << ',' << grid.z << ')';
  } else if (block.volume() == 0 || block.volume() > 1024 || block.z > 64) {
    s << "invalid block (" << block.x << ',' << block.y << ',' << block.z
      << "): 1..1024 threads, z <= 64";
  } else if (smem_bytes > max_smem_bytes) {
    s << smem_bytes << " bytes of dynamic shared memory requested; the limit is " << max_smem_bytes;
  } else {
    return;
  }
  fail(s.str());
}

/// Runs every block of the grid in linear order.
inline emulation_stats run_grid(index3 grid, index3 block, std::size_t smem_bytes,
                                std::size_t stack_bytes, std::size_t max_smem_bytes,
                                kernel_ref kernel) {
  if (t_block != nullptr) fail("emulated_launch called from inside an emulated kernel");
  check_launch(grid, block, smem_bytes, max_smem_bytes);
  emulation_stats stats;
  stack_pool pool(stack_bytes, block.volume());
  // 1024-byte alignment: what TMA swizzled tiles need, and more than any primitive here does.
  constexpr std::align_val_t k_smem_alignment{1024};
  const std::size_t smem_alloc = std::max<std::size_t>(smem_bytes, 1);
  std::byte* smem = static_cast<std::byte*>(::operator new(smem_alloc, k_smem_alignment));
  struct smem_guard {
    std::byte* p;
    std::align_val_t a;
    ~smem_guard() { ::operator delete(p, a); }
  } guard{smem, k_smem_alignment};

  block_state b;
  b.block_dim = block;
  b.grid_dim = grid;
  b.smem = smem;
  b.smem_bytes = smem_bytes;
  b.stats = &stats;
  struct current_guard {
    block_state* previous;
    ~current_guard() {
      t_block = previous;
      t_thread = nullptr;
    }
  } restore{t_block};
  for (unsigned z = 0; z < grid.z; ++z) {
    for (unsigned y = 0; y < grid.y; ++y) {
      for (unsigned x = 0; x < grid.x; ++x) {
        b.block_idx = index3(x, y, z);
        b.arrived = 0;
        b.generation = 0;
        std::memset(smem, 0xff, smem_alloc);
        t_block = &b;
        run_block(b, kernel, pool);
        ++stats.blocks;
        stats.threads += block.volume();
      }
    }
  }
  return stats;
}

}  // namespace emu

/// Launch options of the host emulation.
struct emulator {
  /// Stack of each thread's fiber. Kernel locals (register arrays) live there.
  std::size_t stack_bytes = 64 * 1024;
  /// Largest dynamic shared memory a launch may ask for: 227 KiB, the sm_90 (H100/H200) opt-in
  /// limit; 163 KiB on sm_80.
  std::size_t max_smem_bytes = 227 * 1024;

  /// Runs kernel(args...) as CUDA would with <<<grid, block, smem_bytes>>>: every block in
  /// turn, each thread as its own fiber, each with its own by-value copy of the arguments.
  /// Throws emulation_error (or what the kernel threw) on failure.
  template <class Kernel, class... Args>
  emulation_stats launch(index3 grid, index3 block, std::size_t smem_bytes, Kernel&& kernel,
                         Args&&... args) const {
    struct bound {
      std::decay_t<Kernel> kernel;
      std::tuple<std::decay_t<Args>...> args;
      static void call(void* self) {
        auto& b = *static_cast<bound*>(self);
        std::apply([&](const auto&... a) { std::invoke(b.kernel, a...); }, b.args);
      }
    } invocation{std::forward<Kernel>(kernel), {std::forward<Args>(args)...}};
    return emu::run_grid(grid, block, smem_bytes, stack_bytes, max_smem_bytes,
                         emu::kernel_ref{&invocation, &bound::call});
  }
};

/// emulator{}.launch(...): the default options (64 KiB fiber stacks).
template <class Kernel, class... Args>
emulation_stats emulated_launch(index3 grid, index3 block, std::size_t smem_bytes, Kernel&& kernel,
                                Args&&... args) {
  return emulator{}.launch(grid, block, smem_bytes, std::forward<Kernel>(kernel),
                           std::forward<Args>(args)...);
}

}  // namespace sinkmoe::arch
