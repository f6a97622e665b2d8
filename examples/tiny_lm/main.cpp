// tiny_lm: a tiny decoder-only language model trained with sinkmoe attention on the CPU, to
// show head collapse and sink-aware head balancing. See README.md and `tiny_lm --help`.
#include "tiny_lm/cli.hpp"

int main(int argc, char** argv) { return tiny_lm::cli_main(argc, argv); }
