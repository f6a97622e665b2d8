// Loader for test/data/reference_vectors.json (format "sinkmoe reference vectors v1"): nine
// small fp64 cases computed by an implementation independent of this project.
// Contains a minimal JSON reader: objects, arrays, numbers, strings (with the usual escapes),
// true/false/null, and Python's NaN/Infinity/-Infinity extensions.
#pragma once

#include "reference.hpp"

#include <cstdlib>
#include <fstream>
#include <map>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace sinkmoe::testing {

namespace json {

struct value {
  enum class type { null, boolean, number, string, array, object } kind = type::null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<value> arr;
  std::map<std::string, value> obj;

  bool has(const std::string& key) const { return kind == type::object && obj.count(key) != 0; }
  const value& operator[](const std::string& key) const {
    if (kind != type::object) throw std::runtime_error("json: not an object (key " + key + ")");
    auto it = obj.find(key);
    if (it == obj.end()) throw std::runtime_error("json: missing key " + key);
    return it->second;
  }
  double number() const {
    if (kind != type::number) throw std::runtime_error("json: not a number");
    return num;
  }
  int integer() const {
    const double d = number();
    if (d != static_cast<double>(static_cast<int>(d))) throw std::runtime_error("json: not an int");
    return static_cast<int>(d);
  }
  const std::string& string() const {
    if (kind != type::string) throw std::runtime_error("json: not a string");
    return str;
  }
  std::vector<double> numbers() const {
    if (kind != type::array) throw std::runtime_error("json: not an array");
    std::vector<double> out;
    out.reserve(arr.size());
    for (const value& v : arr) out.push_back(v.number());
    return out;
  }
  std::vector<int> integers() const {
    if (kind != type::array) throw std::runtime_error("json: not an array");
    std::vector<int> out;
    out.reserve(arr.size());
    for (const value& v : arr) out.push_back(v.integer());
    return out;
  }
};

class parser {
 public:
  explicit parser(const std::string& text) : s_(text) {}
  value parse() {
    value v = parse_value();
    skip_ws();
    if (i_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  const std::string& s_;
  std::size_t i_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("json: " + what + " at offset " + std::to_string(i_));
  }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t'))
      ++i_;
  }
  bool eat(const char* word) {
    const std::string w(word);
    if (s_.compare(i_, w.size(), w) != 0) return false;
    i_ += w.size();
    return true;
  }
  void expect(char ch) {
    skip_ws();
    if (i_ >= s_.size() || s_[i_] != ch) fail(std::string("expected '") + ch + "'");
    ++i_;
  }
  value parse_value() {
    skip_ws();
    if (i_ >= s_.size()) fail("unexpected end");
    value v;
    const char ch = s_[i_];
    if (ch == '{') {
      v.kind = value::type::object;
      ++i_;
      skip_ws();
      if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
      for (;;) {
        skip_ws();
        std::string key = parse_string();
        expect(':');
        v.obj[key] = parse_value();
        skip_ws();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        expect('}');
        return v;
      }
    }
    if (ch == '[') {
      v.kind = value::type::array;
      ++i_;
      skip_ws();
      if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
      for (;;) {
        v.arr.push_back(parse_value());
        skip_ws();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        expect(']');
        return v;
      }
    }
    if (ch == '"') { v.kind = value::type::string; v.str = parse_string(); return v; }
    if (eat("true")) { v.kind = value::type::boolean; v.b = true; return v; }
    if (eat("false")) { v.kind = value::type::boolean; return v; }
    if (eat("null")) return v;
    v.kind = value::type::number;
    if (eat("NaN")) { v.num = std::numeric_limits<double>::quiet_NaN(); return v; }
    if (eat("Infinity")) { v.num = std::numeric_limits<double>::infinity(); return v; }
    if (eat("-Infinity")) { v.num = -std::numeric_limits<double>::infinity(); return v; }
    const char* begin = s_.c_str() + i_;
    char* end = nullptr;
    v.num = std::strtod(begin, &end);
    if (end == begin) fail("bad value");
    i_ += static_cast<std::size_t>(end - begin);
    return v;
  }
  std::string parse_string() {
    if (i_ >= s_.size() || s_[i_] != '"') fail("expected string");
    ++i_;
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char ch = s_[i_++];
      if (ch != '\\') { out += ch; continue; }
      if (i_ >= s_.size()) fail("bad escape");
      const char e = s_[i_++];
      switch (e) {
        case '"': case '\\': case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {  // the file is ASCII; keep BMP code points as UTF-8
          if (i_ + 4 > s_.size()) fail("bad \\u escape");
          const unsigned cp = static_cast<unsigned>(std::stoul(s_.substr(i_, 4), nullptr, 16));
          i_ += 4;
          if (cp < 0x80) out += char(cp);
          else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
          else {
            out += char(0xE0 | (cp >> 12));
            out += char(0x80 | ((cp >> 6) & 0x3F));
            out += char(0x80 | (cp & 0x3F));
          }
          break;
        }
        default: fail("bad escape");
      }
    }
    if (i_ >= s_.size()) fail("unterminated string");
    ++i_;
    return out;
  }
};

inline value parse(const std::string& text) { return parser(text).parse(); }

}  // namespace json

struct ref_case {
  std::string name;
  ref::config cfg;
  ref::inputs in;
  ref::cotangents cot;       // cotangent_out, cotangent_lse, cotangent_router
  ref::balance_config bal;   // balance.lam, balance.shared_heads (population std)
  int gate_dim = 0;          // 0 without a gate
  std::vector<double> out, lse, router;
  std::vector<int> counted;
  std::vector<double> importance;
  double balance_loss = 0;
  // Gradients of L = sum(out*cot_out) + sum(lse*cot_lse, finite) + sum(router*cot_router)
  // + balance_loss; grad_sinks / grad_gate_logits are empty when the file has none.
  std::vector<double> grad_q, grad_k, grad_v, grad_sinks, grad_gate_logits;
};

namespace detail {

inline ref::sink_kind parse_sink(const std::string& s) {
  if (s == "none") return ref::sink_kind::none;
  if (s == "learned") return ref::sink_kind::learned;
  if (s == "fixed") return ref::sink_kind::fixed;
  throw std::runtime_error("reference vectors: unknown sink " + s);
}
inline ref::gate_kind parse_gate(const std::string& s) {
  if (s == "none") return ref::gate_kind::none;
  if (s == "headwise") return ref::gate_kind::headwise;
  if (s == "elementwise") return ref::gate_kind::elementwise;
  throw std::runtime_error("reference vectors: unknown gate " + s);
}
inline ref::route_kind parse_route(const std::string& s) {
  if (s == "sink_mass") return ref::route_kind::sink_mass;
  if (s == "output_gate") return ref::route_kind::output_gate;
  if (s == "product") return ref::route_kind::product;
  throw std::runtime_error("reference vectors: unknown route " + s);
}
inline ref::mask_kind parse_mask(const std::string& s) {
  if (s == "none") return ref::mask_kind::none;
  if (s == "causal") return ref::mask_kind::causal;
  if (s == "sliding_window") return ref::mask_kind::sliding_window;
  if (s == "streaming") return ref::mask_kind::streaming;
  throw std::runtime_error("reference vectors: unknown mask " + s);
}

inline std::vector<double> optional_numbers(const json::value& c, const char* key) {
  return c.has(key) ? c[key].numbers() : std::vector<double>{};
}

}  // namespace detail

inline std::vector<ref_case> load_reference_cases(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("reference vectors: cannot open " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  const json::value root = json::parse(ss.str());
  if (root["format"].string() != "sinkmoe reference vectors v1")
    throw std::runtime_error("reference vectors: unexpected format " + root["format"].string());
  std::vector<ref_case> cases;
  for (const json::value& c : root["cases"].arr) {
    ref_case rc;
    rc.name = c["name"].string();
    ref::config& cfg = rc.cfg;
    cfg.B = c["B"].integer();
    cfg.Tq = c["Tq"].integer();
    cfg.Tk = c["Tk"].integer();
    cfg.Hq = c["Hq"].integer();
    cfg.Hkv = c["Hkv"].integer();
    cfg.D = c["D"].integer();
    cfg.scale = c["scale"].number();
    cfg.softcap = c.has("softcap") ? c["softcap"].number() : 0.0;
    cfg.sink = detail::parse_sink(c["sink"].string());
    cfg.gate = detail::parse_gate(c["gate"].string());
    cfg.route = detail::parse_route(c["route"].string());
    cfg.mask = detail::parse_mask(c["mask"].string());
    cfg.window = c["window"].integer();
    cfg.sink_tokens = c["sink_tokens"].integer();
    cfg.top_left = false;  // the file uses bottom-right causal alignment throughout
    rc.in.q = c["q"].numbers();
    rc.in.k = c["k"].numbers();
    rc.in.v = c["v"].numbers();
    rc.in.sinks = detail::optional_numbers(c, "sinks");
    rc.in.gate_logits = detail::optional_numbers(c, "gate_logits");
    if (cfg.sink == ref::sink_kind::fixed) {
      // The file stores a fixed sink as a `sinks` array with one (equal) value per head.
      if (rc.in.sinks.empty()) throw std::runtime_error("reference vectors: fixed sink without value");
      for (double b : rc.in.sinks)
        if (b != rc.in.sinks.front())
          throw std::runtime_error("reference vectors: fixed sink differs across heads");
      cfg.fixed_sink = rc.in.sinks.front();
    }
    rc.gate_dim = c.has("gate_dim") ? c["gate_dim"].integer() : 0;
    rc.cot.dout = c["cotangent_out"].numbers();
    rc.cot.dlse = c["cotangent_lse"].numbers();
    rc.cot.drouter = c["cotangent_router"].numbers();
    rc.bal.lambda = c["balance"]["lam"].number();
    rc.bal.shared_heads = c["balance"]["shared_heads"].integer();
    rc.bal.sample_std = false;
    rc.out = c["out"].numbers();
    rc.lse = c["lse"].numbers();
    rc.router = c["router"].numbers();
    rc.counted = c["counted"].integers();
    rc.importance = c["importance"].numbers();
    rc.balance_loss = c["balance_loss"].number();
    rc.grad_q = c["grad_q"].numbers();
    rc.grad_k = c["grad_k"].numbers();
    rc.grad_v = c["grad_v"].numbers();
    rc.grad_sinks = detail::optional_numbers(c, "grad_sinks");
    rc.grad_gate_logits = detail::optional_numbers(c, "grad_gate_logits");
    cases.push_back(std::move(rc));
  }
  return cases;
}

}  // namespace sinkmoe::testing
