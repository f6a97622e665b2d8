// Checkpoint files and config text (see checkpoint.hpp for the format).
#include "tiny_lm/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>

#include "tiny_lm/crc32.hpp"

namespace tiny_lm {

namespace {

constexpr char k_magic[8] = {'T', 'L', 'M', 'C', 'K', 'P', 'T', '\0'};
constexpr std::uint32_t k_header_size = 32;

std::string format_double(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

// ---- Little-endian encoding ----
struct writer {
  std::string bytes;
  void u16(std::uint16_t x) {
    for (int i = 0; i < 2; ++i) bytes.push_back(char((x >> (8 * i)) & 0xFF));
  }
  void u32(std::uint32_t x) {
    for (int i = 0; i < 4; ++i) bytes.push_back(char((x >> (8 * i)) & 0xFF));
  }
  void u64(std::uint64_t x) {
    for (int i = 0; i < 8; ++i) bytes.push_back(char((x >> (8 * i)) & 0xFF));
  }
  void raw(const std::string& s) { bytes += s; }
  void floats(const std::vector<float>& v) {
    u64(v.size());
    for (const float f : v) u32(std::bit_cast<std::uint32_t>(f));
  }
  void section(const char tag[4], const std::string& body) {
    bytes.append(tag, 4);
    u64(body.size());
    bytes += body;
  }
};

struct reader {
  const std::string& bytes;
  std::size_t pos;
  std::size_t end;
  const std::string& prefix;
  [[noreturn]] void fail(const std::string& what) const { throw usage_error(prefix + what); }
  void need(std::size_t n) const {
    if (end - pos < n) fail("malformed: a section runs past its end");
  }
  std::uint64_t uint(int size) {
    need(std::size_t(size));
    std::uint64_t x = 0;
    for (int i = 0; i < size; ++i)
      x |= std::uint64_t(static_cast<unsigned char>(bytes[pos + i])) << (8 * i);
    pos += std::size_t(size);
    return x;
  }
  std::string raw(std::size_t n) {
    need(n);
    std::string s = bytes.substr(pos, n);
    pos += n;
    return s;
  }
  std::vector<float> floats(const char* what) {
    const std::uint64_t n = uint(8);
    if (n > (end - pos) / 4)
      fail(std::string("malformed: ") + what + " count runs past the section");
    std::vector<float> v(n);
    for (auto& f : v) f = std::bit_cast<float>(static_cast<std::uint32_t>(uint(4)));
    return v;
  }
};

std::uint64_t read_u64(const std::string& s, std::size_t at) {
  std::uint64_t x = 0;
  for (int i = 0; i < 8; ++i) x |= std::uint64_t(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return x;
}
std::uint32_t read_u32(const std::string& s, std::size_t at) {
  std::uint32_t x = 0;
  for (int i = 0; i < 4; ++i) x |= std::uint32_t(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return x;
}

}  // namespace

std::map<std::string, std::string> config_fields(const train_config& c) {
  const model_config& m = c.model;
  return {
      {"mechanism", name_of(m.mech)},
      {"layers", std::to_string(m.layers)},
      {"heads", std::to_string(m.heads)},
      {"width", std::to_string(m.width)},
      {"seq", std::to_string(m.seq)},
      {"mlp-mult", std::to_string(m.mlp_mult)},
      {"window", std::to_string(m.window)},
      {"untied", m.tied ? "0" : "1"},
      {"no-token-shift", m.token_shift ? "0" : "1"},
      {"batch", std::to_string(c.batch)},
      {"steps", std::to_string(c.steps)},
      {"warmup", std::to_string(c.warmup)},
      {"lr", format_double(c.lr)},
      {"min-lr-ratio", format_double(c.min_lr_ratio)},
      {"weight-decay", format_double(c.weight_decay)},
      {"beta1", format_double(c.beta1)},
      {"beta2", format_double(c.beta2)},
      {"adam-eps", format_double(c.adam_eps)},
      {"clip", format_double(c.clip)},
      {"lambda", format_double(c.lambda)},
      {"shared-heads", std::to_string(c.shared_heads)},
      {"seed", std::to_string(c.seed)},
      {"data", c.data_path},
  };
}

std::string config_to_text(const train_config& cfg) {
  std::string text;
  for (const auto& [key, value] : config_fields(cfg)) text += key + "=" + value + "\n";
  return text;
}

train_config config_from_text(const std::string& text, const std::string& where) {
  std::map<std::string, std::string> fields;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) throw usage_error(where + "malformed config line '" + line + "'");
    fields[line.substr(0, eq)] = line.substr(eq + 1);
  }
  const auto get = [&](const char* key) -> const std::string& {
    const auto it = fields.find(key);
    if (it == fields.end()) throw usage_error(where + "config lacks '" + key + "'");
    return it->second;
  };
  const auto integer = [&](const char* key) {
    try {
      return std::stoll(get(key));
    } catch (const std::logic_error&) {
      throw usage_error(where + "config '" + key + "' is not an integer");
    }
  };
  const auto real = [&](const char* key) {
    try {
      return std::stod(get(key));
    } catch (const std::logic_error&) {
      throw usage_error(where + "config '" + key + "' is not a number");
    }
  };
  train_config c;
  const auto mech = parse_mechanism(get("mechanism"));
  if (!mech) throw usage_error(where + "config has unknown mechanism '" + get("mechanism") + "'");
  c.model.mech = *mech;
  c.model.layers = int(integer("layers"));
  c.model.heads = int(integer("heads"));
  c.model.width = int(integer("width"));
  c.model.seq = int(integer("seq"));
  c.model.mlp_mult = int(integer("mlp-mult"));
  c.model.window = int(integer("window"));
  c.model.tied = integer("untied") == 0;
  c.model.token_shift = integer("no-token-shift") == 0;
  c.batch = int(integer("batch"));
  c.steps = int(integer("steps"));
  c.warmup = int(integer("warmup"));
  c.lr = real("lr");
  c.min_lr_ratio = real("min-lr-ratio");
  c.weight_decay = real("weight-decay");
  c.beta1 = real("beta1");
  c.beta2 = real("beta2");
  c.adam_eps = real("adam-eps");
  c.clip = real("clip");
  c.lambda = real("lambda");
  c.shared_heads = int(integer("shared-heads"));
  try {
    c.seed = std::stoull(get("seed"));
  } catch (const std::logic_error&) {
    throw usage_error(where + "config 'seed' is not an integer");
  }
  c.data_path = get("data");
  if (c.model.layers < 1 || c.model.heads < 1 || c.model.width < 1 ||
      c.model.width % c.model.heads != 0 || c.model.seq < 2 || c.batch < 1 || c.steps < 1)
    throw usage_error(where + "config holds an impossible model shape");
  return c;
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot write " + tmp + ": " + std::strerror(errno));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      const std::string why = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      throw std::runtime_error("cannot write " + tmp + ": " + why);
    }
    done += std::size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write " + tmp + ": " + why);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot rename " + tmp + " to " + path + ": " + why);
  }
}

void save_checkpoint(const std::string& path, const checkpoint_data& ckpt) {
  writer payload;
  payload.section("CONF", config_to_text(ckpt.config));
  {
    writer s;
    s.u64(static_cast<std::uint64_t>(ckpt.step));
    for (const std::uint64_t w : ckpt.data_rng) s.u64(w);
    s.u64(ckpt.data_size);
    s.u32(ckpt.data_crc);
    payload.section("STAT", s.bytes);
  }
  {
    writer s;
    s.u32(static_cast<std::uint32_t>(ckpt.tensors.size()));
    for (const stored_tensor& t : ckpt.tensors) {
      s.u16(static_cast<std::uint16_t>(t.name.size()));
      s.raw(t.name);
      s.u32(static_cast<std::uint32_t>(t.rows));
      s.u32(static_cast<std::uint32_t>(t.cols));
    }
    payload.section("TENS", s.bytes);
  }
  const std::pair<const char*, const std::vector<float>*> arrays[] = {
      {"PARM", &ckpt.params}, {"ADMM", &ckpt.adam_m}, {"ADMV", &ckpt.adam_v}};
  for (const auto& [tag, values] : arrays) {
    writer s;
    s.floats(*values);
    payload.section(tag, s.bytes);
  }
  writer file;
  file.bytes.append(k_magic, 8);
  file.u32(k_checkpoint_version);
  file.u32(k_header_size);
  file.u64(payload.bytes.size());
  file.u32(crc32(payload.bytes.data(), payload.bytes.size()));
  file.u32(crc32(file.bytes.data(), file.bytes.size()));
  file.bytes += payload.bytes;
  write_file_atomic(path, file.bytes);
}

checkpoint_data load_checkpoint(const std::string& path, const std::string& where) {
  const std::string prefix = where + " " + path + ": ";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw usage_error(prefix + "cannot open (" + std::strerror(errno) + ")");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < k_header_size)
    throw usage_error(prefix + "not a tiny_lm checkpoint (" + std::to_string(bytes.size()) +
                      " bytes, shorter than the header)");
  if (std::memcmp(bytes.data(), k_magic, 8) != 0)
    throw usage_error(prefix + "not a tiny_lm checkpoint (bad magic)");
  if (read_u32(bytes, 28) != crc32(bytes.data(), 28))
    throw usage_error(prefix + "corrupt header (checksum mismatch)");
  const std::uint32_t version = read_u32(bytes, 8);
  if (version != k_checkpoint_version)
    throw usage_error(prefix + "format version " + std::to_string(version) +
                      ", this build reads version " + std::to_string(k_checkpoint_version));
  if (read_u32(bytes, 12) != k_header_size) throw usage_error(prefix + "corrupt header (size)");
  const std::uint64_t payload_size = read_u64(bytes, 16);
  const std::uint64_t have = bytes.size() - k_header_size;
  if (have < payload_size)
    throw usage_error(prefix + "truncated (" + std::to_string(bytes.size()) +
                      " bytes, the header says " + std::to_string(payload_size + k_header_size) +
                      ")");
  if (have > payload_size)
    throw usage_error(prefix + "has " + std::to_string(have - payload_size) +
                      " unexpected trailing bytes");
  if (read_u32(bytes, 24) != crc32(bytes.data() + k_header_size, payload_size))
    throw usage_error(prefix + "corrupt (payload checksum mismatch)");

  checkpoint_data ckpt;
  bool seen[6] = {};
  reader r{bytes, k_header_size, bytes.size(), prefix};
  while (r.pos < r.end) {
    const std::string tag = r.raw(4);
    const std::uint64_t length = r.uint(8);
    r.need(length);
    reader body{bytes, r.pos, r.pos + length, prefix};
    r.pos += length;
    if (tag == "CONF") {
      ckpt.config = config_from_text(body.raw(length), prefix);
      seen[0] = true;
    } else if (tag == "STAT") {
      ckpt.step = static_cast<std::int64_t>(body.uint(8));
      for (auto& w : ckpt.data_rng) w = body.uint(8);
      ckpt.data_size = body.uint(8);
      ckpt.data_crc = static_cast<std::uint32_t>(body.uint(4));
      seen[1] = true;
    } else if (tag == "TENS") {
      const std::uint64_t count = body.uint(4);
      for (std::uint64_t i = 0; i < count; ++i) {
        stored_tensor t;
        t.name = body.raw(body.uint(2));
        t.rows = static_cast<int>(body.uint(4));
        t.cols = static_cast<int>(body.uint(4));
        ckpt.tensors.push_back(std::move(t));
      }
      seen[2] = true;
    } else if (tag == "PARM") {
      ckpt.params = body.floats("PARM");
      seen[3] = true;
    } else if (tag == "ADMM") {
      ckpt.adam_m = body.floats("ADMM");
      seen[4] = true;
    } else if (tag == "ADMV") {
      ckpt.adam_v = body.floats("ADMV");
      seen[5] = true;
    } else {
      throw usage_error(prefix + "unknown section '" + tag + "'");
    }
  }
  const char* names[] = {"CONF", "STAT", "TENS", "PARM", "ADMM", "ADMV"};
  for (int i = 0; i < 6; ++i)
    if (!seen[i]) throw usage_error(prefix + "lacks the " + names[i] + " section");
  std::size_t total = 0;
  for (const stored_tensor& t : ckpt.tensors) total += std::size_t(t.rows) * std::size_t(t.cols);
  if (ckpt.params.size() != total || ckpt.adam_m.size() != total || ckpt.adam_v.size() != total)
    throw usage_error(prefix + "parameter and optimiser arrays do not match the tensor table");
  if (ckpt.step < 0 || ckpt.step > ckpt.config.steps)
    throw usage_error(prefix + "step " + std::to_string(ckpt.step) + " is outside the run's " +
                      std::to_string(ckpt.config.steps) + " steps");
  return ckpt;
}

}  // namespace tiny_lm
