// A downstream project found sinkmoe with find_package(sinkmoe CONFIG): run one small call.
#include <cmath>
#include <cstdio>
#include <vector>

#include <sinkmoe/sinkmoe.hpp>

int main() {
  constexpr int B = 1, T = 5, H = 2, D = 4;
  std::vector<float> q(B * T * H * D, 0.5f), k(q.size(), 0.25f), v(q.size(), 1.0f), out(q.size());
  std::vector<float> lse(B * H * T), router(lse.size()), sinks(H, 0.0f);
  sinkmoe::forward_args<float> fa{{q.data(), {B, T, H, D}},  {k.data(), {B, T, H, D}},
                                  {v.data(), {B, T, H, D}},  {sinks.data(), {H}},
                                  {},                        {out.data(), {B, T, H, D}},
                                  {lse.data(), {B, H, T}},   {router.data(), {B, H, T}}};
  sinkmoe::sink_attention<>::forward(sinkmoe::exec::host{1}, fa);
  // All keys equal, value 1, sink logit 0: out = G = t' / (t' + e^{-s}) style, finite and < 1.
  for (float x : out)
    if (!std::isfinite(x) || x <= 0.0f || x >= 1.0f) return 1;
  std::printf("sinkmoe %s (find_package consumer): out[0] = %.4f, G[0] = %.4f\n",
              sinkmoe::version_string, out[0], router[0]);
  return 0;
}
