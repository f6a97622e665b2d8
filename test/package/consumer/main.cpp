#include <cstdio>
#include <sinkmoe/sinkmoe.hpp>

int main() {
  std::printf("sinkmoe %s (find_package consumer)\n", sinkmoe::version_string);
  return 0;
}
