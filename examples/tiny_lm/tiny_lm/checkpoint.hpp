#pragma once
// Checkpoints: parameters, AdamW moments, step, data RNG state and the full config, in a
// versioned little-endian binary file written atomically (temporary file, fsync, rename).
//
// Layout (format version 1):
//   0   8 bytes  magic "TLMCKPT\0"
//   8   u32      format version
//   12  u32      header size (32)
//   16  u64      payload size in bytes
//   24  u32      CRC-32 of the payload
//   28  u32      CRC-32 of bytes 0..27
//   32  payload: sections, each u32 tag + u64 length + bytes:
//       "CONF" the config as key=value lines;  "STAT" u64 step, 4 x u64 RNG state,
//       u64 data size, u32 data CRC;  "TENS" u32 count, then per tensor u16 name length, name,
//       u32 rows, u32 cols;  "PARM", "ADMM", "ADMV" u64 count, then float32 values.
// A file whose magic, version, sizes, checksums or sections do not check out is refused with a
// one-line error before anything is used: a run is never half-loaded.

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tiny_lm/config.hpp"
#include "tiny_lm/rng.hpp"

namespace tiny_lm {

inline constexpr std::uint32_t k_checkpoint_version = 1;

/// Name and shape of one parameter tensor, as stored.
struct stored_tensor {
  std::string name;
  int rows = 0;
  int cols = 0;
  bool operator==(const stored_tensor&) const = default;
};

/// Everything a resumed run needs.
struct checkpoint_data {
  train_config config;
  std::int64_t step = 0;        ///< optimiser steps completed
  rng::state_type data_rng{};   ///< the training-data RNG after `step` steps
  std::uint64_t data_size = 0;  ///< the data file's size and CRC-32 (0 for the built-in corpus)
  std::uint32_t data_crc = 0;
  std::vector<stored_tensor> tensors;
  std::vector<float> params, adam_m, adam_v;
};

/// The config as "key=value" lines (keys are the flag names without "--").
std::string config_to_text(const train_config& cfg);
/// Parses config_to_text's output; throws usage_error prefixed with `where`.
train_config config_from_text(const std::string& text, const std::string& where);
/// The same as a key -> value map (for comparing configs field by field).
std::map<std::string, std::string> config_fields(const train_config& cfg);

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename.
void write_file_atomic(const std::string& path, const std::string& bytes);

void save_checkpoint(const std::string& path, const checkpoint_data& ckpt);
/// Loads and verifies a checkpoint; throws usage_error "<where> <path>: <what is wrong>".
checkpoint_data load_checkpoint(const std::string& path, const std::string& where);

}  // namespace tiny_lm
