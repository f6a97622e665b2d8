// Checks of sinkmoe::error messages shared by the suites that test rejected arguments.
#pragma once

#include <boost/test/unit_test.hpp>
#include <initializer_list>
#include <sinkmoe/core/error.hpp>
#include <string>

namespace sinkmoe::testing {

/// Whether calling f throws sinkmoe::error whose message contains every one of `parts` (a
/// missing part is logged as a test message).
template <class F>
bool throws_naming(F&& f, std::initializer_list<const char*> parts) {
  try {
    f();
  } catch (const sinkmoe::error& e) {
    const std::string what = e.what();
    for (const char* part : parts)
      if (what.find(part) == std::string::npos) {
        BOOST_TEST_MESSAGE("message lacks '" << part << "': " << what);
        return false;
      }
    return true;
  }
  return false;
}

}  // namespace sinkmoe::testing
