// Temporary placeholder: prints the library version. To be replaced by the real quickstart.
#include <cstdio>
#include <sinkmoe/sinkmoe.hpp>

int main() {
  std::printf("sinkmoe %s quickstart (placeholder)\n", sinkmoe::version_string);
  return 0;
}
