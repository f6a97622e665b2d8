#pragma once
// Training data: byte-level tokens from a UTF-8 text file, or a built-in generated corpus.
//
// Every sequence starts with BOS (byte 0xFF, which never occurs in UTF-8), so that vanilla
// attention has the same first token to use as its sink in every sequence; the model then reads
// `seq - 1` data bytes and predicts `seq` (the next byte at every position).
//
// The built-in corpus mixes two kinds of clauses, so that a model needs heads of different
// kinds (a previous-token head and an induction head for recall, a long-range head for number
// agreement, local heads for spelling):
//   recall:   "K4 X7 M1 Q9 | X7 Q9 K4 M1 ."  3-6 key-value pairs (distinct capital letters,
//             random digits), then " | ", then every key again in a new order; the digit after a
//             queried key is determined by the context (the "answer" tokens, scored as recall
//             accuracy). Learning it needs an induction-style lookup by content, which a model
//             this small finds only after a few thousand steps (see README).
//   grammar:  "the old cats that see a dog chase some bird ."  a small stochastic grammar whose
//             verbs agree in number with the subject across an optional relative clause.
// Clauses are drawn with probability 1/2 each and joined by spaces; every other byte is random,
// so the irreducible loss is well above zero and recall accuracy is the sharp signal.

#include <cstdint>
#include <string>
#include <vector>

#include "tiny_lm/rng.hpp"

namespace tiny_lm {

/// The start-of-sequence token: 0xFF is not a valid byte anywhere in UTF-8 text.
inline constexpr std::uint8_t bos_token = 0xFF;

/// A batch of [batch, seq] token ids.
struct sample_batch {
  int batch = 0;
  int seq = 0;
  std::vector<std::uint8_t> input;   ///< BOS, then the first seq - 1 data bytes
  std::vector<std::uint8_t> target;  ///< the seq data bytes (next token at each position)
  std::vector<std::uint8_t> answer;  ///< 1 where the target is a recall answer (built-in corpus)
  void resize(int b, int s);
  /// Rows [begin, end) of this batch into `out` (a data-parallel rank's slice).
  void copy_rows(int begin, int end, sample_batch& out) const;
};

/// Fills `length` bytes of generated text (whole clauses, the last one cut) and marks the
/// recall answers in `answer`.
void generate_text(rng& r, int length, std::uint8_t* text, std::uint8_t* answer);

/// A train/validation split of byte-level data.
class dataset {
 public:
  /// The built-in generated corpus: training samples are drawn fresh from the caller's RNG;
  /// the validation set is fixed (its own seed), `val_sequences` sequences.
  static dataset builtin(int seq, int val_sequences);
  /// A UTF-8 text file: the last 10% of its bytes are the validation split. Throws usage_error
  /// (naming --data or --seq) for a missing, empty or non-UTF-8 file or one shorter than seq.
  static dataset from_file(const std::string& path, int seq, int val_sequences);

  /// Draws a training batch (advances r).
  void sample_train(rng& r, int batch, sample_batch& out) const;
  /// Number of validation sequences, and the batch of sequences [first, first + batch) (the
  /// last batch may hold fewer rows: out.batch says how many).
  [[nodiscard]] int validation_sequences() const { return static_cast<int>(val_.size()); }
  void validation_batch(int first, int batch, sample_batch& out) const;

  [[nodiscard]] bool generated() const { return path_.empty(); }
  [[nodiscard]] int seq() const { return seq_; }
  [[nodiscard]] const std::string& path() const { return path_; }
  [[nodiscard]] std::uint64_t size() const { return size_; }
  [[nodiscard]] std::uint32_t crc() const { return crc_; }
  /// One line describing the data, for logs and --help.
  [[nodiscard]] std::string describe() const;

 private:
  struct sequence {
    std::vector<std::uint8_t> text;    ///< seq data bytes
    std::vector<std::uint8_t> answer;  ///< seq flags
  };
  void fill_row(const std::uint8_t* text, const std::uint8_t* answer, int row,
                sample_batch& out) const;

  int seq_ = 0;
  std::string path_;
  std::uint64_t size_ = 0;
  std::uint32_t crc_ = 0;
  std::vector<std::uint8_t> train_bytes_;  ///< file data: the training split
  std::vector<sequence> val_;
};

/// Returns the byte offset of the first invalid UTF-8 sequence, or -1 when the text is valid.
long long first_invalid_utf8(const std::uint8_t* data, std::size_t size);

}  // namespace tiny_lm
