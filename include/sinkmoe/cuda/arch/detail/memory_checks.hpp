#pragma once
// The memory checks of the host emulation (docs/emulation.md), included by emulator.hpp: what
// makes an emulated launch a sanitizer for the kernel defects a GPU shows and a plain CPU run
// hides. Every check throws arch::emulation_error naming the kernel, the block, both threads and
// both source lines.
//
// Shared memory (every access goes through the primitive layer: load_shared / store_shared,
// ldmatrix, cp.async). Each byte has a shadow that remembers its last write and up to two reads
// since, with the thread, the block epoch (advanced by every sync_block), the warp's sync_warp
// epoch and the call site. Two accesses to a byte, one of them a write, by different threads,
// in the same block epoch, are a race unless both threads are in the same warp and a sync_warp
// lies between them, or one of them is a warp collective (ldmatrix: the warp reads at one point
// of every lane's program order, as the hardware executes it). A read of a byte nobody in the
// block has written yet is an error too (the 0xff fill would otherwise flow into results).
//
// cp.async: from its issue until the cp_async_wait_group that retires it, a destination byte is
// in flight: any access to it, by any thread, is an error, and issuing it counts as a write
// (so refilling a pipeline stage that another warp may still read is a race). At the wait the
// bytes land as the issuing thread's write in the current epoch: other threads may read them
// only after the next sync_block.
//
// Global memory (load_global / store_global, cp.async sources): every access must be aligned to
// its width (a 16-byte vector to 16 bytes), must not point into shared memory, and, when the
// launch registered the tensors it may touch (emulator::globals), must lie inside one of them,
// stores inside a writable one. Within a block, a read or store of a byte another thread stored
// in the same barrier epoch is a race, as for shared memory. Stores are journaled per block run,
// so that a block can be run again in another thread order from the same memory and the stored
// bytes compared.
//
// What stays unchecked: accesses that bypass the primitive layer (plain pointer dereferences),
// global reads followed by another thread's store (write after read), and memory ordering
// between blocks (they run one after another).

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace sinkmoe::arch::emu {

/// What an access does to shared memory.
enum class smem_access : std::uint8_t {
  read,             ///< load_shared
  write,            ///< store_shared
  collective_read,  ///< a row of an ldmatrix
  async_issue,      ///< a cp.async destination, now in flight
};

inline constexpr std::uint8_t k_async = 4;  ///< a write record left by a landed cp.async

/// Throws unless [p, p + bytes) lies in the block's dynamic shared memory and p is aligned.
inline void check_smem_range(const block_state& b, unsigned rank, const void* p, std::size_t bytes,
                             std::size_t alignment, const char* what, const site& at) {
  const auto* c = static_cast<const std::byte*>(p);
  if (c < b.smem || c + bytes > b.smem + b.smem_bytes) {
    std::ostringstream s;
    s << where(b) << ' ' << who(rank) << ": " << what << " address " << p << " (+" << bytes
      << " bytes) at " << describe(at) << " is outside the dynamic shared memory ["
      << static_cast<const void*>(b.smem) << ", +" << b.smem_bytes << ')';
    fail(s.str());
  }
  if (reinterpret_cast<std::uintptr_t>(p) % alignment != 0) {
    std::ostringstream s;
    s << where(b) << ' ' << who(rank) << ": " << what << " address " << p << " at " << describe(at)
      << " is not " << alignment << "-byte aligned";
    fail(s.str());
  }
}

/// True when `prev` happens before an access by thread `rank` (warp sync epoch `warp_epoch`,
/// block epoch `epoch`), or the two cannot conflict (same thread).
inline bool ordered(const access_record& prev, unsigned rank, std::uint16_t warp_epoch,
                    bool collective, std::uint32_t epoch) {
  if (prev.epoch != epoch) return true;  // a sync_block lies between (or another block ran)
  if (prev.thread == rank) return true;  // program order
  if (prev.thread / k_warp_size != rank / k_warp_size) return false;
  if ((prev.flags & k_collective) != 0 || collective) return true;
  return prev.warp_epoch != warp_epoch;  // a sync_warp lies between
}

/// "written by", "read by", "read by ldmatrix (row address of)" or "landed by cp.async of".
inline const char* what_of(const access_record& r, bool is_write) {
  if (!is_write) return (r.flags & k_collective) != 0 ? "read by an ldmatrix row of" : "read by";
  return (r.flags & k_async) != 0 ? "written by a cp.async of" : "written by";
}

[[noreturn]] inline void report_race(const block_state& b, std::size_t offset,
                                     const access_record& first, bool first_is_write, unsigned rank,
                                     const char* second, const site& at) {
  std::ostringstream s;
  const bool same_warp = first.thread / k_warp_size == rank / k_warp_size;
  s << "shared-memory race in " << where(b) << " at byte offset " << offset << " (of "
    << b.smem_bytes << "): " << what_of(first, first_is_write) << ' ' << who(first.thread) << " at "
    << describe(first.where) << ", then " << second << ' ' << who(rank) << " at " << describe(at)
    << (same_warp ? ", with no sync_warp or sync_block between"
                  : ", with no sync_block between (different warps)");
  fail(s.str());
}

/// Checks and records one shared-memory access of `bytes` bytes at p by thread `rank`.
inline void shared_access(block_state& b, unsigned rank, const void* p, std::size_t bytes,
                          smem_access kind, const site& at) {
  const bool collective = kind == smem_access::collective_read;
  const bool is_read = kind == smem_access::read || collective;
  const std::size_t alignment = collective || kind == smem_access::async_issue
                                    ? 16
                                    : (std::has_single_bit(bytes) && bytes <= 16 ? bytes : 1);
  check_smem_range(b, rank, p, bytes, alignment,
                   collective                         ? "ldmatrix row"
                   : kind == smem_access::async_issue ? "cp_async destination"
                   : is_read                          ? "shared load"
                                                      : "shared store",
                   at);
  const std::size_t offset = static_cast<std::size_t>(static_cast<const std::byte*>(p) - b.smem);
  const unsigned warp = rank / k_warp_size;
  const std::uint16_t warp_epoch = b.warps[warp].sync_epoch;
  const std::uint32_t epoch = b.epoch;
  const access_record mine{at, epoch, warp_epoch, static_cast<std::uint16_t>(rank),
                           static_cast<std::uint8_t>(collective ? k_collective
                                                     : kind == smem_access::async_issue ? k_pending
                                                                                        : 0)};
  for (std::size_t i = 0; i < bytes; ++i) {
    shadow_byte& s = b.shadow[offset + i];
    const bool written_here = s.write.epoch >= b.first_epoch && s.write.epoch != 0;
    if (written_here && (s.write.flags & k_pending) != 0) {
      std::ostringstream m;
      m << where(b) << ' ' << who(rank) << (is_read ? " reads" : " writes") << " shared byte "
        << offset + i << " at " << describe(at) << " while the cp.async that "
        << who(s.write.thread) << " issued at " << describe(s.write.where)
        << " into it is in flight: the issuing thread may touch it after the "
           "cp_async_wait_group that retires it, other threads after the sync_block that follows";
      fail(m.str());
    }
    if (is_read) {
      if (!written_here) {
        std::ostringstream m;
        m << where(b) << ' ' << who(rank) << " reads shared byte " << offset + i << " (of "
          << b.smem_bytes << ") at " << describe(at)
          << ", which no thread of this block has written";
        fail(m.str());
      }
      if (!ordered(s.write, rank, warp_epoch, collective, epoch))
        report_race(b, offset + i, s.write, true, rank,
                    collective ? "read by an ldmatrix row of" : "read by", at);
      const std::uint32_t warp_bit = 1u << (warp % 32);
      if (s.read[0].epoch != epoch) {
        s.read[0] = mine;
        s.read[1].epoch = 0;
        s.read_warps = warp_bit;
      } else {
        s.read_warps |= warp_bit;
        if (s.read[0].thread != rank) s.read[1] = mine;
      }
    } else {
      if (written_here && !ordered(s.write, rank, warp_epoch, false, epoch))
        report_race(b, offset + i, s.write, true, rank,
                    kind == smem_access::async_issue ? "written by a cp.async of" : "written by",
                    at);
      if (s.read[0].epoch == epoch) {
        const char* second =
            kind == smem_access::async_issue ? "written by a cp.async of" : "written by";
        for (const access_record& r : s.read)
          if (r.epoch == epoch && !ordered(r, rank, warp_epoch, false, epoch))
            report_race(b, offset + i, r, false, rank, second, at);
        const std::uint32_t others = s.read_warps & ~(1u << (warp % 32));
        if (others != 0) {  // a reader of another warp that the two records did not keep
          std::ostringstream m;
          m << "shared-memory race in " << where(b) << " at byte offset " << offset + i
            << ": read by a thread of warp " << std::countr_zero(others) << ", then " << second
            << ' ' << who(rank) << " at " << describe(at) << ", with no sync_block between";
          fail(m.str());
        }
      }
      s.write = mine;
      s.read[0].epoch = s.read[1].epoch = 0;
      s.read_warps = 0;
    }
  }
}

/// A cp.async of thread t lands: its destination becomes t's write in the current epoch.
inline void land_async_copy(block_state& b, const thread_state& t, const async_copy& c) {
  const std::size_t offset = static_cast<std::size_t>(c.dst - b.smem);
  const access_record landed{c.where, b.epoch, b.warps[t.warp].sync_epoch,
                             static_cast<std::uint16_t>(t.rank), k_async};
  for (std::size_t i = 0; i < c.bytes; ++i) {
    shadow_byte& s = b.shadow[offset + i];
    s.write = landed;
    s.read[0].epoch = s.read[1].epoch = 0;
    s.read_warps = 0;
  }
}

// ---- Global memory ----

/// The registered range holding p, or null.
inline const global_range* range_of(const block_state& b, const void* p) {
  if (b.checks.globals == nullptr) return nullptr;
  const auto* c = static_cast<const std::byte*>(p);
  for (const global_range& r : *b.checks.globals) {
    const auto* begin = static_cast<const std::byte*>(r.data);
    if (c >= begin && c < begin + r.bytes) return &r;
  }
  return nullptr;
}

/// " (in 'name' at byte offset n)" for a registered address, else "".
inline std::string locate(const block_state& b, const void* p) {
  const global_range* r = range_of(b, p);
  if (r == nullptr) return "";
  std::ostringstream s;
  s << " (in " << r->name << " at byte offset "
    << static_cast<const std::byte*>(p) - static_cast<const std::byte*>(r->data) << ')';
  return s.str();
}

/// Checks one global access of `bytes` bytes at p by thread `rank`; journals a store.
inline void global_access(block_state& b, unsigned rank, const void* p, std::size_t bytes,
                          bool store, const site& at) {
  const char* what = store ? "global store" : "global load";
  const auto* c = static_cast<const std::byte*>(p);
  const std::size_t alignment = std::has_single_bit(bytes) && bytes <= 16 ? bytes : 1;
  if (reinterpret_cast<std::uintptr_t>(p) % alignment != 0) {
    std::ostringstream s;
    s << where(b) << ' ' << who(rank) << ": " << bytes << "-byte " << what << " at " << p
      << locate(b, p) << " at " << describe(at) << " is not " << alignment
      << "-byte aligned (a misaligned-address fault on the GPU)";
    fail(s.str());
  }
  if (c + bytes > b.smem && c < b.smem + b.smem_bytes) {
    fail(where(b) + " " + who(rank) + ": " + what + " at " + describe(at) +
         " points into shared memory");
  }
  const std::vector<global_range>* ranges = b.checks.globals;
  if (ranges != nullptr && !ranges->empty()) {
    const global_range* hit = nullptr;
    for (const global_range& r : *ranges) {
      const auto* begin = static_cast<const std::byte*>(r.data);
      if (c >= begin && c + bytes <= begin + r.bytes) {
        hit = &r;
        if (!store || r.writable) break;
      }
    }
    if (hit == nullptr) {
      // Name the nearest tensor: an index off by a row shows up as "n bytes past the end of".
      std::ostringstream s;
      s << where(b) << ' ' << who(rank) << ": " << bytes << "-byte " << what << " at " << p
        << " at " << describe(at) << " is outside every tensor of the launch";
      std::ptrdiff_t best = -1;
      for (const global_range& r : *ranges) {
        const auto* begin = static_cast<const std::byte*>(r.data);
        const std::ptrdiff_t past = c + bytes > begin + r.bytes ? c + bytes - (begin + r.bytes) : 0;
        const std::ptrdiff_t before = c < begin ? begin - c : 0;
        const std::ptrdiff_t distance = std::max(past, before);
        if (best < 0 || distance < best) {
          best = distance;
          s.str("");
          s << where(b) << ' ' << who(rank) << ": " << bytes << "-byte " << what << " at " << p
            << " at " << describe(at) << " is outside every tensor of the launch: "
            << (past > 0 ? std::to_string(past) + " bytes past the end of "
                         : std::to_string(before) + " bytes before the start of ")
            << r.name << " (" << r.bytes << " bytes)";
        }
      }
      fail(s.str());
    }
    if (store && !hit->writable) {
      std::ostringstream s;
      s << where(b) << ' ' << who(rank) << ": global store at " << describe(at) << " into "
        << hit->name << " (byte offset " << c - static_cast<const std::byte*>(hit->data)
        << "), which the launch only reads";
      fail(s.str());
    }
  }
  // Threads of a block that pass data through global memory need a barrier too: a read of a byte
  // another thread stored in this run, or a second store, with no sync_block (or sync_warp in
  // the same warp) between them is a race. (Reads then stores, write after read, are not
  // tracked for global memory.)
  if (store || !b.global_writes.empty()) {
    const unsigned warp = rank / k_warp_size;
    const std::uint16_t warp_epoch = b.warps[warp].sync_epoch;
    const access_record mine{at, b.epoch, warp_epoch, static_cast<std::uint16_t>(rank), 0};
    for (std::size_t i = 0; i < bytes; ++i) {
      const auto address = reinterpret_cast<std::uintptr_t>(c + i);
      const auto found = b.global_writes.find(address);
      if (found != b.global_writes.end() &&
          !ordered(found->second, rank, warp_epoch, false, b.epoch)) {
        std::ostringstream s;
        s << "global-memory race in " << where(b) << " at address "
          << static_cast<const void*>(c + i) << locate(b, c + i) << ": written by "
          << who(found->second.thread) << " at " << describe(found->second.where) << ", then "
          << (store ? "written" : "read") << " by " << who(rank) << " at " << describe(at)
          << (found->second.thread / k_warp_size == warp
                  ? ", with no sync_warp or sync_block between"
                  : ", with no sync_block between (different warps)");
        fail(s.str());
      }
      if (store) b.global_writes[address] = mine;
    }
  }
  if (store) {
    journal_entry e{const_cast<std::byte*>(c), static_cast<unsigned>(bytes), rank, at, {}};
    std::memcpy(e.before.data(), c, std::min<std::size_t>(bytes, e.before.size()));
    b.journal.push_back(e);
  }
}

// ---- Comparing the runs of a block in two schedules ----

/// One global byte a block run stored, and its value after the run.
struct stored_byte {
  std::uintptr_t address;
  std::byte value;
  friend bool operator==(const stored_byte&, const stored_byte&) = default;
};

/// The bytes a run stored (sorted by address) and their values now.
inline void stored_bytes(const std::vector<journal_entry>& journal, std::vector<stored_byte>& out) {
  out.clear();
  for (const journal_entry& e : journal)
    for (unsigned i = 0; i < e.bytes; ++i)
      out.push_back({reinterpret_cast<std::uintptr_t>(e.address) + i, std::byte{0}});
  std::sort(out.begin(), out.end(),
            [](const stored_byte& x, const stored_byte& y) { return x.address < y.address; });
  out.erase(std::unique(
                out.begin(), out.end(),
                [](const stored_byte& x, const stored_byte& y) { return x.address == y.address; }),
            out.end());
  for (stored_byte& s : out) s.value = *reinterpret_cast<const std::byte*>(s.address);
}

/// Restores the memory a run's stores overwrote (latest first).
inline void undo(const std::vector<journal_entry>& journal) {
  for (auto e = journal.rbegin(); e != journal.rend(); ++e)
    std::memcpy(e->address, e->before.data(), e->bytes);
}

inline const char* name(thread_order o) {
  switch (o) {
    case thread_order::forward:
      return "forward";
    case thread_order::reverse:
      return "reverse";
    case thread_order::rotated:
      return "rotated";
    case thread_order::random:
      return "random";
  }
  return "?";
}

/// Throws unless two runs of a block stored the same bytes with the same values.
inline void compare_runs(const block_state& b, const schedule& first_order,
                         const schedule& other_order, const std::vector<stored_byte>& first,
                         const std::vector<stored_byte>& other) {
  if (first == other) return;
  std::size_t i = 0;
  while (i < first.size() && i < other.size() && first[i] == other[i]) ++i;
  std::ostringstream s;
  s << "schedule-dependent result in " << where(b) << ": the " << name(first_order.order) << " and "
    << name(other_order.order) << " thread orders ";
  const auto last_store = [&](std::uintptr_t address) {
    for (auto e = b.journal.rbegin(); e != b.journal.rend(); ++e) {
      const auto begin = reinterpret_cast<std::uintptr_t>(e->address);
      if (address >= begin && address < begin + e->bytes)
        return ", last stored by " + who(e->thread) + " at " + describe(e->where);
    }
    return std::string();
  };
  if (i < first.size() && i < other.size() && first[i].address == other[i].address) {
    const auto* p = reinterpret_cast<const void*>(first[i].address);
    s << "store different values at global address " << p << locate(b, p) << ": 0x" << std::hex
      << static_cast<int>(first[i].value) << " against 0x" << static_cast<int>(other[i].value)
      << std::dec << last_store(first[i].address);
  } else {
    const bool in_first =
        i < first.size() && (i >= other.size() || first[i].address < other[i].address);
    const std::uintptr_t address = in_first ? first[i].address : other[i].address;
    const auto* p = reinterpret_cast<const void*>(address);
    s << "store different sets of bytes: only the "
      << name(in_first ? first_order.order : other_order.order) << " order stores " << p
      << locate(b, p) << (in_first ? "" : last_store(address));
  }
  fail(s.str());
}

}  // namespace sinkmoe::arch::emu
