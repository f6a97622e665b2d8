#pragma once
// Scratch memory of the CPU backend, kept between calls.
//
// A forward or backward call needs scratch buffers linear in the sequence length (K and V staged
// per head, dK/dV partials) and a few tiles per task. Fresh buffers of that size cost page faults
// and zeroing on every call (5-10% of a T = 512 forward), so each thread keeps one grow-only
// block: a call takes its buffers from it by bumping a pointer, in nested frames, and gives them
// back when the frame ends. A frame that does not fit takes extra blocks for the moment; at the
// end of the outermost frame the thread's block grows to the largest demand seen, so a repeated
// call of the same shape allocates nothing. host::release_workspace() frees every idle block.

#include <algorithm>
#include <cstddef>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

namespace sinkmoe::host {

namespace detail {

class scratch_arena {
 public:
  static constexpr std::size_t alignment = 64;

  /// The calling thread's arena (OpenMP workers each have their own).
  static scratch_arena& local() {
    thread_local scratch_arena arena;
    return arena;
  }

  scratch_arena(const scratch_arena&) = delete;
  scratch_arena& operator=(const scratch_arena&) = delete;

  /// Frees the cached blocks of every arena no frame is using; returns the bytes freed.
  static std::size_t release_idle() {
    std::lock_guard<std::mutex> registry_lock(registry().mutex);
    std::size_t freed = 0;
    for (scratch_arena* arena : registry().arenas) {
      std::unique_lock<std::mutex> lock(arena->in_use_, std::try_to_lock);
      if (!lock.owns_lock()) continue;  // a call is running on that thread
      freed += arena->capacity_;
      arena->main_.reset();
      arena->capacity_ = 0;
    }
    return freed;
  }

  /// Bytes held by every arena's cached block.
  static std::size_t cached_bytes() {
    std::lock_guard<std::mutex> registry_lock(registry().mutex);
    std::size_t total = 0;
    for (const scratch_arena* arena : registry().arenas) total += arena->capacity_;
    return total;
  }

 private:
  friend class scratch_frame;
  struct block_deleter {
    void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t(alignment)); }
  };
  using block_ptr = std::unique_ptr<std::byte[], block_deleter>;
  struct arena_registry {
    std::mutex mutex;
    std::vector<scratch_arena*> arenas;
  };

  static arena_registry& registry() {
    static arena_registry* r = new arena_registry;  // never destroyed: thread exits may come last
    return *r;
  }
  static block_ptr new_block(std::size_t bytes) {
    return block_ptr(static_cast<std::byte*>(::operator new[](bytes, std::align_val_t(alignment))));
  }

  scratch_arena() {
    std::lock_guard<std::mutex> lock(registry().mutex);
    registry().arenas.push_back(this);
  }
  ~scratch_arena() {
    std::lock_guard<std::mutex> lock(registry().mutex);
    auto& arenas = registry().arenas;
    arenas.erase(std::remove(arenas.begin(), arenas.end(), this), arenas.end());
  }

  void* take(std::size_t bytes) {
    bytes = (bytes + alignment - 1) / alignment * alignment;
    demand_ += bytes;
    peak_ = std::max(peak_, demand_);
    if (used_ + bytes <= capacity_) {
      void* p = main_.get() + used_;
      used_ += bytes;
      return p;
    }
    overflow_.push_back(new_block(bytes));
    return overflow_.back().get();
  }

  block_ptr main_;
  std::size_t capacity_ = 0;  // bytes of main_
  std::size_t used_ = 0;      // bytes of main_ held by open frames
  std::size_t demand_ = 0;    // bytes held by open frames, main_ and overflow together
  std::size_t peak_ = 0;      // largest demand_ seen: main_'s size after the outermost frame
  std::vector<block_ptr> overflow_;
  int depth_ = 0;      // open frames on this thread
  std::mutex in_use_;  // held by the outermost frame, so that release_idle skips this arena
};

/// A frame of scratch allocations on the calling thread's arena, released at scope exit (frames
/// nest; allocations are uninitialised and 64-byte aligned).
class scratch_frame {
 public:
  scratch_frame() : arena_(scratch_arena::local()) {
    if (arena_.depth_++ == 0) arena_.in_use_.lock();
    used_ = arena_.used_;
    demand_ = arena_.demand_;
  }
  ~scratch_frame() {
    arena_.used_ = used_;
    arena_.demand_ = demand_;
    if (--arena_.depth_ == 0) {
      arena_.overflow_.clear();
      if (arena_.peak_ > arena_.capacity_) {
        arena_.main_.reset();
        arena_.main_ = scratch_arena::new_block(arena_.peak_);
        arena_.capacity_ = arena_.peak_;
      }
      arena_.in_use_.unlock();
    }
    // An inner frame keeps its overflow blocks until the outermost frame ends (an enclosing
    // frame's pointers may sit in earlier ones); the next call finds room in the grown block.
  }
  scratch_frame(const scratch_frame&) = delete;
  scratch_frame& operator=(const scratch_frame&) = delete;

  /// count uninitialised elements of T.
  template <class T>
  T* take(std::size_t count) {
    return static_cast<T*>(arena_.take(count * sizeof(T)));
  }

 private:
  scratch_arena& arena_;
  std::size_t used_, demand_;
};

}  // namespace detail

/// Frees the scratch memory the CPU backend keeps between calls (every thread's idle block);
/// returns the bytes freed. Blocks of calls running at that moment are kept. The next call
/// allocates again.
inline std::size_t release_workspace() { return detail::scratch_arena::release_idle(); }

/// Bytes of scratch memory the CPU backend keeps between calls, over all threads.
inline std::size_t workspace_bytes() { return detail::scratch_arena::cached_bytes(); }

}  // namespace sinkmoe::host
