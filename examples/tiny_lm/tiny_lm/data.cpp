// Data: the generated corpus and UTF-8 text files (see data.hpp for what they hold).
#include "tiny_lm/data.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include "tiny_lm/config.hpp"
#include "tiny_lm/crc32.hpp"

namespace tiny_lm {

void sample_batch::resize(int b, int s) {
  batch = b;
  seq = s;
  const std::size_t n = static_cast<std::size_t>(b) * static_cast<std::size_t>(s);
  input.assign(n, 0);
  target.assign(n, 0);
  answer.assign(n, 0);
}

void sample_batch::copy_rows(int begin, int end, sample_batch& out) const {
  if (begin < 0 || end > batch || begin >= end)
    throw std::logic_error("tiny_lm: rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                           ") of a batch of " + std::to_string(batch));
  out.resize(end - begin, seq);
  const auto from = static_cast<std::ptrdiff_t>(begin) * seq;
  const auto to = static_cast<std::ptrdiff_t>(end) * seq;
  std::copy(input.begin() + from, input.begin() + to, out.input.begin());
  std::copy(target.begin() + from, target.begin() + to, out.target.begin());
  std::copy(answer.begin() + from, answer.begin() + to, out.answer.begin());
}

namespace {

// ---- The stochastic grammar (number agreement across an optional relative clause) ----
struct word_pair {
  const char* singular;
  const char* plural;
};
constexpr word_pair k_determiners[] = {
    {"the", "the"}, {"a", "some"}, {"one", "two"}, {"this", "these"}};
constexpr word_pair k_nouns[] = {{"cat", "cats"},  {"dog", "dogs"}, {"bird", "birds"},
                                 {"fox", "foxes"}, {"owl", "owls"}, {"frog", "frogs"}};
constexpr const char* k_adjectives[] = {"red", "small", "quick", "old", "green"};
constexpr word_pair k_transitive[] = {
    {"sees", "see"}, {"likes", "like"}, {"chases", "chase"}, {"finds", "find"}};
constexpr word_pair k_intransitive[] = {{"sleeps", "sleep"}, {"runs", "run"}, {"sings", "sing"}};

template <class Array>
const auto& pick(rng& r, const Array& options) {
  return options[r.below(static_cast<std::uint32_t>(std::size(options)))];
}

struct text_builder {
  std::string text;
  std::vector<std::uint8_t> answer;
  void add(std::string_view s, bool is_answer = false) {
    text.append(s);
    answer.insert(answer.end(), s.size(), is_answer ? 1 : 0);
  }
};

void noun_phrase(rng& r, bool plural, text_builder& out) {
  const word_pair& det = pick(r, k_determiners);
  out.add(plural ? det.plural : det.singular);
  out.add(" ");
  if (r.uniform() < 0.4) {
    out.add(pick(r, k_adjectives));
    out.add(" ");
  }
  const word_pair& noun = pick(r, k_nouns);
  out.add(plural ? noun.plural : noun.singular);
}

void grammar_clause(rng& r, text_builder& out) {
  const bool plural = r.uniform() < 0.5;
  noun_phrase(r, plural, out);
  if (r.uniform() < 0.4) {  // relative clause: its verb agrees with the head noun too
    out.add(" that ");
    const word_pair& verb = pick(r, k_transitive);
    out.add(plural ? verb.plural : verb.singular);
    out.add(" ");
    noun_phrase(r, r.uniform() < 0.5, out);
  }
  out.add(" ");
  if (r.uniform() < 0.6) {
    const word_pair& verb = pick(r, k_transitive);
    out.add(plural ? verb.plural : verb.singular);
    out.add(" ");
    noun_phrase(r, r.uniform() < 0.5, out);
  } else {
    const word_pair& verb = pick(r, k_intransitive);
    out.add(plural ? verb.plural : verb.singular);
  }
  out.add(" .");
}

// ---- Multi-query associative recall ----
// "K4 X7 M1 | X7 M1 K4 .": 3-6 pairs of distinct capital letters and random digits, then every
// key again in a new order; the digit after a queried key is the answer.
void recall_clause(rng& r, text_builder& out) {
  const int pairs = 3 + static_cast<int>(r.below(4));
  char keys[26];
  for (int i = 0; i < 26; ++i) keys[i] = static_cast<char>('A' + i);
  for (int i = 0; i < pairs; ++i) std::swap(keys[i], keys[i + r.below(26u - i)]);
  char values[6];
  for (int i = 0; i < pairs; ++i) {
    values[i] = static_cast<char>('0' + r.below(10));
    const char pair[3] = {keys[i], values[i], ' '};
    out.add(std::string_view(pair, 3));
  }
  out.add("|");
  int order[6];
  for (int i = 0; i < pairs; ++i) order[i] = i;
  for (int i = 0; i < pairs; ++i) std::swap(order[i], order[i + r.below(pairs - i)]);
  for (int i = 0; i < pairs; ++i) {
    const char key[2] = {' ', keys[order[i]]};
    out.add(std::string_view(key, 2));
    out.add(std::string_view(&values[order[i]], 1), /*is_answer=*/true);
  }
  out.add(" .");
}

[[noreturn]] void data_error(const std::string& path, const std::string& what) {
  throw usage_error("--data " + path + ": " + what);
}

}  // namespace

void generate_text(rng& r, int length, std::uint8_t* text, std::uint8_t* answer) {
  text_builder out;
  while (static_cast<int>(out.text.size()) < length) {
    if (!out.text.empty()) out.add(" ");
    if (r.uniform() < 0.5)
      recall_clause(r, out);
    else
      grammar_clause(r, out);
  }
  std::memcpy(text, out.text.data(), static_cast<std::size_t>(length));
  std::memcpy(answer, out.answer.data(), static_cast<std::size_t>(length));
}

long long first_invalid_utf8(const std::uint8_t* data, std::size_t size) {
  std::size_t i = 0;
  while (i < size) {
    const std::uint8_t c = data[i];
    int extra = 0;
    std::uint32_t code = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1;
      code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      code = c & 0x07;
    } else {
      return static_cast<long long>(i);
    }
    if (i + static_cast<std::size_t>(extra) >= size) return static_cast<long long>(i);  // cut short
    for (int k = 1; k <= extra; ++k) {
      if ((data[i + k] & 0xC0) != 0x80) return static_cast<long long>(i);
      code = (code << 6) | (data[i + k] & 0x3F);
    }
    // Overlong forms, UTF-16 surrogates and code points above U+10FFFF are invalid.
    const std::uint32_t min_code[] = {0, 0x80, 0x800, 0x10000};
    if (code < min_code[extra] || (code >= 0xD800 && code <= 0xDFFF) || code > 0x10FFFF)
      return static_cast<long long>(i);
    i += static_cast<std::size_t>(extra) + 1;
  }
  return -1;
}

dataset dataset::builtin(int seq, int val_sequences) {
  dataset d;
  d.seq_ = seq;
  rng val_rng(0x7A11D47Aull, "validation");  // fixed: the same set for every run and seed
  d.val_.resize(static_cast<std::size_t>(val_sequences));
  for (auto& s : d.val_) {
    s.text.resize(static_cast<std::size_t>(seq));
    s.answer.resize(static_cast<std::size_t>(seq));
    generate_text(val_rng, seq, s.text.data(), s.answer.data());
  }
  return d;
}

dataset dataset::from_file(const std::string& path, int seq, int val_sequences) {
  std::ifstream in(path, std::ios::binary);
  if (!in) data_error(path, std::string("cannot open (") + std::strerror(errno) + ")");
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
  if (in.bad()) data_error(path, "read error");
  if (bytes.empty()) data_error(path, "the file is empty");
  if (const long long bad = first_invalid_utf8(bytes.data(), bytes.size()); bad >= 0)
    data_error(
        path, "not UTF-8 text (invalid byte 0x" +
                  [&] {
                    char hex[3];
                    std::snprintf(hex, sizeof hex, "%02X", bytes[static_cast<std::size_t>(bad)]);
                    return std::string(hex);
                  }() +
                  " at offset " + std::to_string(bad) + ")");
  const std::size_t val_size = bytes.size() / 10;
  const std::size_t train_size = bytes.size() - val_size;
  if (val_size < static_cast<std::size_t>(seq))
    throw usage_error(
        "--seq " + std::to_string(seq) + " is above the data: " + path + " holds " +
        std::to_string(bytes.size()) + " bytes, its validation split (the last 10%, " +
        std::to_string(val_size) + " bytes) needs at least " + std::to_string(seq) +
        " (use a shorter --seq or a file of at least " + std::to_string(10 * seq) + " bytes)");
  dataset d;
  d.seq_ = seq;
  d.path_ = path;
  d.size_ = bytes.size();
  d.crc_ = crc32(bytes.data(), bytes.size());
  d.train_bytes_.assign(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(train_size));
  // Validation windows evenly spaced over the validation split.
  const std::size_t span = val_size - static_cast<std::size_t>(seq);
  const std::size_t count =
      std::min<std::size_t>(static_cast<std::size_t>(val_sequences), span + 1);
  d.val_.resize(count);
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t offset = train_size + (count > 1 ? i * span / (count - 1) : 0);
    d.val_[i].text.assign(bytes.begin() + static_cast<std::ptrdiff_t>(offset),
                          bytes.begin() + static_cast<std::ptrdiff_t>(offset + seq));
    d.val_[i].answer.assign(static_cast<std::size_t>(seq), 0);
  }
  return d;
}

void dataset::fill_row(const std::uint8_t* text, const std::uint8_t* answer, int row,
                       sample_batch& out) const {
  const std::size_t base = static_cast<std::size_t>(row) * static_cast<std::size_t>(seq_);
  out.input[base] = bos_token;
  for (int t = 0; t < seq_; ++t) {
    if (t + 1 < seq_) out.input[base + t + 1] = text[t];
    out.target[base + t] = text[t];
    out.answer[base + t] = answer ? answer[t] : 0;
  }
}

void dataset::sample_train(rng& r, int batch, sample_batch& out) const {
  out.resize(batch, seq_);
  std::vector<std::uint8_t> text(static_cast<std::size_t>(seq_)), answer(text.size());
  for (int b = 0; b < batch; ++b) {
    if (generated()) {
      generate_text(r, seq_, text.data(), answer.data());
      fill_row(text.data(), answer.data(), b, out);
    } else {
      const std::uint64_t span = train_bytes_.size() - static_cast<std::size_t>(seq_) + 1;
      const std::uint64_t offset = r.next() % span;
      fill_row(train_bytes_.data() + offset, nullptr, b, out);
    }
  }
}

void dataset::validation_batch(int first, int batch, sample_batch& out) const {
  const int rows = std::min(batch, validation_sequences() - first);
  out.resize(rows, seq_);
  for (int b = 0; b < rows; ++b) {
    const sequence& s = val_[static_cast<std::size_t>(first + b)];
    fill_row(s.text.data(), s.answer.data(), b, out);
  }
}

std::string dataset::describe() const {
  std::ostringstream os;
  if (generated())
    os << "built-in corpus (associative recall + agreement grammar), " << validation_sequences()
       << " validation sequences";
  else
    os << path_ << " (" << size_ << " bytes: " << train_bytes_.size() << " train, "
       << size_ - train_bytes_.size() << " validation, " << validation_sequences()
       << " validation windows)";
  return os.str();
}

}  // namespace tiny_lm
