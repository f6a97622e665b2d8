#pragma once
// Library version, kept in step with project(VERSION) in the top-level CMakeLists.txt.
#define SINKMOE_VERSION_MAJOR 0
#define SINKMOE_VERSION_MINOR 1
#define SINKMOE_VERSION_PATCH 0

namespace sinkmoe {
/// The library version as "major.minor.patch".
inline constexpr const char* version_string = "0.1.0";
}  // namespace sinkmoe
