#pragma once
// The runtime of the host emulation of the primitive layer (docs/emulation.md): one
// Boost.Context fiber per thread of a block, resumed by one scheduler thread, with a barrier per
// block, a barrier per warp, and an exchange buffer per warp through which shuffles, ldmatrix
// and mma.sync fragments travel; plus the checks that make it a sanitizer for kernel code
// (memory_checks.hpp: shared-memory races, cp.async visibility, uninitialised reads; global
// alignment and bounds; schedule comparison). Tests only; g++ only.
//
// Scheduling. The threads of a block run one at a time, each until it blocks at a barrier or a
// warp collective or exits; a blocked thread is not resumed until its barrier has completed.
// The order in which the scheduler visits the runnable threads is a schedule (thread_order):
// rank order, reverse, rotated, or seeded random. Every block runs once per schedule of its
// launch, from the same global memory; the global bytes each run stores must agree bitwise, or
// the launch fails naming the first byte that differs. The blocks of a grid run one after
// another, in linear order (x fastest). Everything is deterministic: the same kernel, inputs and
// schedules always interleave the same way.
//
// Barriers count live threads: a thread that has returned no longer holds up sync_block, as on
// the hardware. Warp data collectives (shuffle, ldmatrix, mma) need all 32 lanes of a full warp,
// which is the only way this layer issues them (full member mask).
//
// Checks a GPU would not report, thrown as arch::emulation_error from the launch: deadlock,
// lanes of one warp meeting in different collectives, a lane exiting while its warp waits in a
// data collective, shared accesses outside the dynamic shared memory or misaligned, a launch the
// hardware would refuse, and those of memory_checks.hpp.
//
// Dynamic shared memory starts filled with 0xff bytes (NaN for bf16, fp16 and float).

#if defined(__CUDACC__)
#error \
    "sinkmoe/cuda/arch/detail/emulator.hpp is the g++ host emulation; do not include it under nvcc"
#endif

#include <algorithm>
#include <array>
#include <boost/context/fiber.hpp>
#include <boost/context/protected_fixedsize_stack.hpp>
#include <boost/context/stack_context.hpp>
#include <boost/core/demangle.hpp>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <new>
#include <numeric>
#include <random>
#include <sinkmoe/cuda/arch/geometry.hpp>
#include <sinkmoe/cuda/arch/site.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

namespace sinkmoe::arch {

/// A kernel did something the emulation can prove wrong (a race, a read of an in-flight
/// cp.async, a misaligned or out-of-bounds access, schedule-dependent results, deadlock,
/// divergent collective, invalid launch). Thrown by emulated_launch.
class emulation_error : public std::logic_error {
 public:
  explicit emulation_error(const std::string& what)
      : std::logic_error("sinkmoe arch emulation: " + what) {}
};

/// How often one call site of a checked primitive ran (the census that mutation tests walk).
struct site_use {
  std::string kernel;     ///< demangled kernel type
  std::string primitive;  ///< "sync_block", "sync_warp", "cp_async_wait_group"
  site where;
  std::uint64_t count = 0;
};

/// What one emulated launch did; the counts make emulation throughput measurable.
/// Counts are of one run of the grid (the first schedule's); `schedules` says how many thread
/// orders every block ran in.
struct emulation_stats {
  std::uint64_t blocks = 0;            ///< blocks run
  std::uint64_t threads = 0;           ///< threads run (blocks x threads per block)
  std::uint64_t block_barriers = 0;    ///< completed sync_block phases (per block)
  std::uint64_t warp_syncs = 0;        ///< completed sync_warp phases (per warp)
  std::uint64_t warp_collectives = 0;  ///< completed shuffles, ldmatrix and mma (per warp)
  std::uint64_t mma = 0;               ///< completed mma.sync m16n8k16 (per warp)
  std::uint64_t resumes = 0;           ///< fiber resumptions by the scheduler
  std::uint64_t schedules = 0;         ///< thread orders each block ran in
  std::vector<site_use> sites;         ///< barrier and wait call sites that ran

  /// Adds another launch's counts and census (stats of a sequence of launches).
  emulation_stats& operator+=(const emulation_stats& o) {
    blocks += o.blocks;
    threads += o.threads;
    block_barriers += o.block_barriers;
    warp_syncs += o.warp_syncs;
    warp_collectives += o.warp_collectives;
    mma += o.mma;
    resumes += o.resumes;
    schedules = std::max(schedules, o.schedules);
    for (const site_use& u : o.sites) add_site(u.kernel, u.primitive.c_str(), u.where, u.count);
    return *this;
  }
  /// Counts one use of a call site.
  void add_site(const std::string& kernel, const char* primitive, const site& where,
                std::uint64_t count = 1) {
    for (site_use& u : sites)
      if (u.where.line() == where.line() && u.where.column() == where.column() &&
          std::strcmp(u.where.file_name(), where.file_name()) == 0 && u.primitive == primitive &&
          u.kernel == kernel) {
        u.count += count;
        return;
      }
    sites.push_back({kernel, primitive, where, count});
  }
};

/// The order in which the scheduler visits the runnable threads of a block.
enum class thread_order : std::uint8_t {
  forward,  ///< rank order
  reverse,  ///< highest rank first
  rotated,  ///< rank order starting at a seeded offset that moves every round
  random,   ///< a seeded random permutation, drawn anew every round
};

/// One schedule a block runs in.
struct schedule {
  thread_order order = thread_order::forward;
  unsigned seed = 0;  ///< rotated and random
};

/// A tensor (or workspace) a launch may access in global memory: every checked global access
/// must lie inside one, and stores inside a writable one. No ranges: bounds are not checked.
struct global_range {
  const void* data = nullptr;
  std::size_t bytes = 0;
  std::string name;
  bool writable = false;
};

/// A seeded defect the emulation applies at run time, at the call sites whose file name ends
/// with `file` and whose line is `line` (mutation tests; see test/mutation).
struct mutation {
  enum class kind : std::uint8_t {
    skip_sync_block,  ///< the sync_block there returns at once
    skip_sync_warp,   ///< the sync_warp there returns at once
    retire_fewer,     ///< the cp_async_wait_group<N> there waits as cp_async_wait_group<N + 1>
  };
  kind what = kind::skip_sync_block;
  std::string file;
  unsigned line = 0;
  std::string kernel;  ///< only in kernels whose demangled name contains this (empty: all)
};

/// Printable form of a call site: "file:line (function)".
inline std::string describe(const site& where) {
  std::ostringstream s;
  const char* file = where.file_name();
  const char* slash = std::strrchr(file, '/');
  const char* include = std::strstr(file, "include/sinkmoe/");
  s << (include != nullptr ? include + 8
        : slash != nullptr ? slash + 1
                           : file)
    << ':' << where.line();
  const std::string function = where.function_name();
  if (!function.empty()) {
    // "void sinkmoe::fused::forward_kernel<...>::operator()(...) const": keep the last name.
    const std::size_t paren = function.find('(');
    std::string head = function.substr(0, paren);
    const std::size_t space = head.rfind(' ');
    if (space != std::string::npos) head = head.substr(space + 1);
    s << " (" << head << ')';
  }
  return s.str();
}

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
  std::uint16_t sync_epoch = 0;  ///< completed sync_warp phases (orders the lanes' accesses)
  warp_op op = warp_op::none;
  std::array<std::array<exchange_slot, k_warp_size>, 2> in{};
  std::array<std::array<exchange_slot, k_warp_size>, 2> out{};
};

/// A cp.async copy not yet performed: performed at the cp_async_wait that retires its group.
struct async_copy {
  std::byte* dst;
  const std::byte* src;  ///< null: zero fill
  unsigned bytes;
  site where;  ///< the cp_async call
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

/// One access as the shadow of a shared byte remembers it.
struct access_record {
  site where{};
  std::uint32_t epoch = 0;       ///< block epoch of the access (0: none)
  std::uint16_t warp_epoch = 0;  ///< the warp's sync_epoch at the access
  std::uint16_t thread = 0;      ///< rank of the accessing thread
  std::uint8_t flags = 0;        ///< k_collective, k_pending
};
inline constexpr std::uint8_t k_collective = 1;  ///< by a warp collective (ldmatrix)
inline constexpr std::uint8_t k_pending = 2;     ///< a cp.async destination still in flight

/// The shadow of one byte of dynamic shared memory: its last write and up to two reads since.
struct shadow_byte {
  access_record write;
  access_record read[2];
  std::uint32_t read_warps = 0;  ///< warps that read it in read[0].epoch (bit w)
};

/// One global store of a block's run, kept so that the run can be undone and compared.
struct journal_entry {
  std::byte* address;
  unsigned bytes;
  unsigned thread;
  site where;
  std::array<std::byte, 16> before;
};

/// What a launch checks against, shared by its blocks.
struct launch_checks {
  const std::vector<global_range>* globals = nullptr;
  const std::vector<mutation>* mutations = nullptr;
};

/// One emulated block: its geometry, shared memory and its shadow, barriers, warps, threads.
struct block_state {
  index3 block_idx;
  index3 block_dim;
  index3 grid_dim;
  std::string kernel;  ///< demangled kernel type, for reports
  std::byte* smem = nullptr;
  std::size_t smem_bytes = 0;
  std::vector<shadow_byte> shadow;  ///< one per byte of smem
  std::uint32_t epoch = 0;          ///< current block epoch (advances at every sync_block)
  std::uint32_t first_epoch = 0;    ///< epoch at the start of this block's current run
  std::uint32_t next_epoch = 1;     ///< epoch counter of the launch
  unsigned live = 0;
  unsigned arrived = 0;
  std::uint64_t generation = 0;
  std::vector<warp_state> warps;
  std::vector<thread_state> threads;
  std::vector<journal_entry> journal;
  std::unordered_map<std::uintptr_t, access_record> global_writes;  ///< this run's global stores
  launch_checks checks;
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

/// "thread r (warp w lane l)".
inline std::string who(unsigned rank) {
  std::ostringstream s;
  s << "thread " << rank << " (warp " << rank / k_warp_size << " lane " << rank % k_warp_size
    << ')';
  return s.str();
}

/// "kernel K block (x,y,z)", for messages.
inline std::string where(const block_state& b) {
  std::ostringstream s;
  s << b.kernel << " block (" << b.block_idx.x << ',' << b.block_idx.y << ',' << b.block_idx.z
    << ')';
  return s.str();
}

/// "kernel K block (x,y,z) thread r (warp w lane l)", for messages.
inline std::string where(const block_state& b, const thread_state& t) {
  return where(b) + " " + who(t.rank);
}

/// True when a mutation of this kind applies at `at`.
inline bool mutated(const block_state& b, mutation::kind what, const site& at) {
  if (b.checks.mutations == nullptr) return false;
  for (const mutation& m : *b.checks.mutations) {
    if (m.what != what || m.line != at.line()) continue;
    if (!m.kernel.empty() && b.kernel.find(m.kernel) == std::string::npos) continue;
    const std::string_view file = at.file_name();
    if (file.size() >= m.file.size() && file.substr(file.size() - m.file.size()) == m.file)
      return true;
  }
  return false;
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

/// A completed sync_block: a new epoch orders every access before it before every one after.
inline void complete_block_barrier(block_state& b) {
  b.arrived = 0;
  ++b.generation;
  b.epoch = b.next_epoch++;
  ++b.stats->block_barriers;
}

/// sync_block: returns when every live thread of the block has arrived.
inline void block_barrier(const site& at) {
  block_state& b = current_block();
  thread_state& t = current_thread();
  b.stats->add_site(b.kernel, "sync_block", at);
  if (mutated(b, mutation::kind::skip_sync_block, at)) return;
  if (++b.arrived == b.live) {
    complete_block_barrier(b);
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
  if (w.op == warp_op::sync) ++w.sync_epoch;
  w.arrived = 0;
  w.op = warp_op::none;
  ++w.generation;
}

/// sync_warp: returns when every live lane of the calling warp has arrived.
inline void warp_barrier(const site& at) {
  block_state& b = current_block();
  thread_state& t = current_thread();
  b.stats->add_site(b.kernel, "sync_warp", at);
  if (mutated(b, mutation::kind::skip_sync_warp, at)) return;
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

}  // namespace emu
}  // namespace sinkmoe::arch

#include <sinkmoe/cuda/arch/detail/memory_checks.hpp>

namespace sinkmoe::arch::emu {

/// Performs one group of deferred cp.async copies of thread t: the bytes land now, as t's write.
inline void perform(block_state& b, const thread_state& t, const std::vector<async_copy>& group) {
  for (const async_copy& c : group) {
    if (c.src != nullptr) {
      std::memcpy(c.dst, c.src, c.bytes);
    } else {
      std::memset(c.dst, 0, c.bytes);
    }
    land_async_copy(b, t, c);
  }
}

/// Bookkeeping when a thread returns: it stops counting at the barriers; a barrier that only
/// waited for it completes.
inline void on_exit(block_state& b, thread_state& t) {
  for (auto& group : t.committed) perform(b, t, group);  // in-flight copies still land
  perform(b, t, t.uncommitted);
  t.committed.clear();
  t.uncommitted.clear();
  --b.live;
  if (b.arrived > 0 && b.arrived == b.live) complete_block_barrier(b);
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
  s << "deadlock in " << where(b) << ": no thread can run;";
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

/// The scheduler's visiting order for one round.
inline void arrange(std::vector<unsigned>& order, const schedule& s, std::uint64_t round,
                    std::mt19937& rng) {
  const unsigned n = static_cast<unsigned>(order.size());
  std::iota(order.begin(), order.end(), 0u);
  switch (s.order) {
    case thread_order::forward:
      break;
    case thread_order::reverse:
      std::reverse(order.begin(), order.end());
      break;
    case thread_order::rotated:
      std::rotate(order.begin(),
                  order.begin() + static_cast<std::ptrdiff_t>((s.seed + 37 * round) % n),
                  order.end());
      break;
    case thread_order::random:
      std::shuffle(order.begin(), order.end(), rng);
      break;
  }
}

/// Runs one block to completion (or failure) in one schedule, with fibers from `pool`.
inline void run_block(block_state& b, kernel_ref kernel, stack_pool& pool, const schedule& s) {
  namespace ctx = boost::context;
  const unsigned n = b.block_dim.volume();
  b.live = n;
  b.arrived = 0;
  b.generation = 0;
  b.failure = nullptr;
  b.epoch = b.first_epoch = b.next_epoch++;
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

  std::vector<unsigned> order(n);
  std::mt19937 rng(s.seed * 2654435761u + b.grid_dim.linear(b.block_idx));
  std::uint64_t round = 0;
  unsigned running = n;
  while (running > 0 && !b.failure) {
    arrange(order, s, round++, rng);
    bool progressed = false;
    for (unsigned r : order) {
      thread_state& t = b.threads[r];
      if (t.done) continue;
      if (t.wait_counter != nullptr) {
        if (*t.wait_counter == t.wait_value) continue;  // its barrier has not completed
        t.wait_counter = nullptr;
      }
      t_thread = &t;
      t.fiber = std::move(t.fiber).resume();
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
      t_thread = nullptr;
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

/// What the launch parameters of run_grid are.
struct grid_launch {
  index3 grid, block;
  std::size_t smem_bytes = 0, stack_bytes = 0, max_smem_bytes = 0;
  std::string kernel;
  const std::vector<schedule>* schedules = nullptr;
  launch_checks checks;
};

/// Runs every block of the grid in linear order, each once per schedule; the global bytes the
/// runs store must agree.
inline emulation_stats run_grid(const grid_launch& l, kernel_ref kernel) {
  if (t_block != nullptr) fail("emulated_launch called from inside an emulated kernel");
  check_launch(l.grid, l.block, l.smem_bytes, l.max_smem_bytes);
  if (l.schedules == nullptr || l.schedules->empty()) fail("emulated_launch: no schedule given");
  emulation_stats stats;
  stats.schedules = l.schedules->size();
  stack_pool pool(l.stack_bytes, l.block.volume());
  // 1024-byte alignment: what TMA swizzled tiles need, and more than any primitive here does.
  constexpr std::align_val_t k_smem_alignment{1024};
  const std::size_t smem_alloc = std::max<std::size_t>(l.smem_bytes, 1);
  std::byte* smem = static_cast<std::byte*>(::operator new(smem_alloc, k_smem_alignment));
  struct smem_guard {
    std::byte* p;
    std::align_val_t a;
    ~smem_guard() { ::operator delete(p, a); }
  } guard{smem, k_smem_alignment};

  block_state b;
  b.block_dim = l.block;
  b.grid_dim = l.grid;
  b.kernel = l.kernel;
  b.smem = smem;
  b.smem_bytes = l.smem_bytes;
  b.shadow.assign(l.smem_bytes, shadow_byte{});
  b.checks = l.checks;
  b.stats = &stats;
  struct current_guard {
    block_state* previous;
    ~current_guard() {
      t_block = previous;
      t_thread = nullptr;
    }
  } restore{t_block};
  std::vector<stored_byte> first_run, other_run;
  for (unsigned z = 0; z < l.grid.z; ++z) {
    for (unsigned y = 0; y < l.grid.y; ++y) {
      for (unsigned x = 0; x < l.grid.x; ++x) {
        b.block_idx = index3(x, y, z);
        for (std::size_t si = 0; si < l.schedules->size(); ++si) {
          std::memset(smem, 0xff, smem_alloc);
          b.journal.clear();
          b.global_writes.clear();
          emulation_stats repeat;  // the counts of the first run are the launch's
          b.stats = si == 0 ? &stats : &repeat;
          t_block = &b;
          run_block(b, kernel, pool, (*l.schedules)[si]);
          t_block = nullptr;
          ++b.stats->blocks;
          b.stats->threads += l.block.volume();
          const bool last = si + 1 == l.schedules->size();
          if (si == 0) {
            stored_bytes(b.journal, first_run);
          } else {
            stored_bytes(b.journal, other_run);
            compare_runs(b, (*l.schedules)[0], (*l.schedules)[si], first_run, other_run);
          }
          if (!last) undo(b.journal);  // the next schedule starts from the same memory
        }
      }
    }
  }
  return stats;
}

}  // namespace sinkmoe::arch::emu

namespace sinkmoe::arch {

namespace emu {

/// Parses SINKMOE_EMULATION_SCHEDULES ("forward,reverse,rotated:3,random:7"); unset: forward and
/// reverse.
inline std::vector<schedule> schedules_from_environment() {
  std::vector<schedule> result;
  const char* text = std::getenv("SINKMOE_EMULATION_SCHEDULES");
  if (text == nullptr || *text == '\0') {
    return {schedule{thread_order::forward, 0}, schedule{thread_order::reverse, 0}};
  }
  std::stringstream list(text);
  std::string item;
  while (std::getline(list, item, ',')) {
    const std::size_t colon = item.find(':');
    const std::string order = item.substr(0, colon);
    const unsigned seed =
        colon == std::string::npos ? 0u : static_cast<unsigned>(std::stoul(item.substr(colon + 1)));
    if (order == "forward") {
      result.push_back({thread_order::forward, seed});
    } else if (order == "reverse") {
      result.push_back({thread_order::reverse, seed});
    } else if (order == "rotated") {
      result.push_back({thread_order::rotated, seed});
    } else if (order == "random") {
      result.push_back({thread_order::random, seed});
    } else {
      fail("SINKMOE_EMULATION_SCHEDULES: unknown thread order '" + order +
           "' (forward, reverse, rotated[:seed], random[:seed])");
    }
  }
  if (result.empty()) fail("SINKMOE_EMULATION_SCHEDULES names no schedule");
  return result;
}

/// What emulated launches of this thread start from (see scoped_emulation).
struct launch_defaults {
  std::vector<schedule> schedules = schedules_from_environment();
  std::vector<mutation> mutations;
};

inline launch_defaults& defaults() {
  thread_local launch_defaults d;
  return d;
}

}  // namespace emu

/// Sets, for its lifetime, the mutations (and optionally the schedules) that every emulator
/// constructed on this thread starts with, so a test can seed a defect into launches made deep
/// inside a harness. Restores the previous defaults on destruction.
class scoped_emulation {
 public:
  explicit scoped_emulation(std::vector<mutation> mutations,
                            std::vector<schedule> schedules = emu::defaults().schedules)
      : saved_(emu::defaults()) {
    emu::defaults().mutations = std::move(mutations);
    emu::defaults().schedules = std::move(schedules);
  }
  scoped_emulation(const scoped_emulation&) = delete;
  scoped_emulation& operator=(const scoped_emulation&) = delete;
  ~scoped_emulation() { emu::defaults() = saved_; }

 private:
  emu::launch_defaults saved_;
};

/// Launch options of the host emulation.
struct emulator {
  /// Stack of each thread's fiber. Kernel locals (register arrays) live there.
  std::size_t stack_bytes = 64 * 1024;
  /// Largest dynamic shared memory a launch may ask for: 227 KiB, the sm_90 (H100/H200) opt-in
  /// limit; 163 KiB on sm_80.
  std::size_t max_smem_bytes = 227 * 1024;
  /// The thread orders every block runs in; the global bytes each run stores must agree.
  /// Default: forward and reverse (or SINKMOE_EMULATION_SCHEDULES).
  std::vector<schedule> schedules = emu::defaults().schedules;
  /// The tensors the launch may touch: when given, every checked global access must lie in one
  /// (stores in a writable one). Empty: alignment is checked, bounds are not.
  std::vector<global_range> globals;
  /// Seeded defects (mutation tests); default: those of the enclosing scoped_emulation.
  std::vector<mutation> mutations = emu::defaults().mutations;

  /// Runs kernel(args...) as CUDA would with <<<grid, block, smem_bytes>>>: every block in
  /// turn, once per schedule, each thread as its own fiber, each with its own by-value copy of
  /// the arguments. Throws emulation_error (or what the kernel threw) on failure.
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
    emu::grid_launch l;
    l.grid = grid;
    l.block = block;
    l.smem_bytes = smem_bytes;
    l.stack_bytes = stack_bytes;
    l.max_smem_bytes = max_smem_bytes;
    l.kernel = boost::core::demangle(typeid(std::decay_t<Kernel>).name());
    l.schedules = &schedules;
    l.checks.globals = &globals;
    l.checks.mutations = &mutations;
    return emu::run_grid(l, emu::kernel_ref{&invocation, &bound::call});
  }
};

/// emulator{}.launch(...): the default options.
template <class Kernel, class... Args>
emulation_stats emulated_launch(index3 grid, index3 block, std::size_t smem_bytes, Kernel&& kernel,
                                Args&&... args) {
  return emulator{}.launch(grid, block, smem_bytes, std::forward<Kernel>(kernel),
                           std::forward<Args>(args)...);
}

}  // namespace sinkmoe::arch
