#include <cstdio>
#include <sinkmoe/sinkmoe.hpp>

int main() {
  std::printf("sinkmoe %s (add_subdirectory consumer)\n", sinkmoe::version_string);
  return 0;
}
