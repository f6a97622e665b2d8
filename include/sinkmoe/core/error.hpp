#pragma once
// The library's one exception type and the helpers that build readable messages.

#include <array>
#include <cstdint>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace sinkmoe {

using index_t = std::int64_t;

/// Prints a shape or stride as "[a, b, c]" (used in error messages).
template <std::size_t N>
std::ostream& operator<<(std::ostream& os, const std::array<index_t, N>& values) {
  os << '[';
  for (std::size_t i = 0; i < N; ++i) os << (i ? ", " : "") << values[i];
  return os << ']';
}

/// Thrown by every host entry point for an argument it cannot honour; the message names the
/// argument and the offending values. Derived from std::invalid_argument.
class error : public std::invalid_argument {
 public:
  explicit error(const std::string& what) : std::invalid_argument("sinkmoe: " + what) {}
};

namespace detail {

/// Concatenates streamable values into one string (used for error messages).
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream stream;
  (stream << ... << parts);
  return stream.str();
}

/// Throws sinkmoe::error with the concatenated message when the condition fails.
template <class... Parts>
void require(bool condition, const Parts&... parts) {
  if (!condition) throw error(concat(parts...));
}

}  // namespace detail
}  // namespace sinkmoe
