// Per-element and per-row math of the reverse diffusion, shared by the fused CPU sampler and the
// fused CUDA kernel (see aigx_hd.h): the Mish activation, one denoising step's update of a sample
// (x0 from the network output, clamp, posterior mean + noise, or the deterministic DDIM update),
// the final map from a sample to a feasible allocation, and a counter-based normal RNG (Philox)
// so GPU sampling needs no random state in memory. The reference these must match is the plain
// PyTorch sampler, aigxctl.diffusion.sample_reference.
#pragma once

#include <math.h>
#include <stdint.h>

#include "aigx_hd.h"

namespace aigx {

// Denoising-step constants for step index i (0-based; the reverse pass runs i = T-1 .. 0),
// precomputed in double from the schedule and stored as float.
struct StepConsts {
  float sqrt_recip_abar;    // sqrt(1 / abar_i)
  float sqrt_recipm1_abar;  // sqrt(1 / abar_i - 1)
  float c1, c2;             // posterior mean = c1 * x0 + c2 * x
  float sigma;              // exp(0.5 * clipped log posterior variance); 0 for i = 0
  float sqrt_abar, inv_sqrt_1m_abar;
  float sqrt_abar_prev, sqrt_1m_abar_prev;
};

enum Prediction : int { kPredictEps = 0, kPredictX0 = 1 };
enum SampleMode : int { kAncestral = 0, kDdim = 1 };

// exp(n ln 2 + r) / 2^n for a whole n and |r| <= ln 2 / 2: the Cody-Waite reduction (ln 2 split
// in a high part exact in float and the low remainder), then 1 + r + r^2 P(r), P a degree-4
// minimax fit (relative error 1.1 ulp over the range, the same as Cephes' degree 5). A template
// so the CPU kernels' vectors (sampler_kernels.inc) run the same arithmetic as fast_exp.
template <typename V>
AIGX_HD V exp_mantissa(V x, V n) {
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = r * 1.381454e-3f + 8.368745e-3f;
  p = p * r + 4.166839e-2f;
  p = p * r + 0.16666521f;
  p = p * r + 0.49999994f;
  return p * r * r + r + 1.0f;
}

// exp(x) for float. On the GPU the hardware-assisted expf; on the CPU a branch-free
// Cody-Waite reduction and polynomial (exp_mantissa) that the compiler can vectorise, where
// libm's expf cannot be inlined into SIMD loops without -ffast-math.
AIGX_HD float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // Round x / ln 2 to the nearest integer with the 1.5 * 2^23 trick (plain adds vectorise on
  // every x86-64, where floorf needs SSE4.1).
  const float n = (x * 1.44269504089f + 12582912.0f) - 12582912.0f;
  // Scale by 2^n through the exponent bits.
  return exp_mantissa(x, n) * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
#endif
}

// Mish(x) = x * tanh(softplus(x)). With e = exp(x): tanh(log(1 + e)) = e(e + 2) / (e(e + 2) + 2),
// one exponential instead of exp + log1p + tanh. Past x = 20 the factor is 1 in float.
AIGX_HD float mish(float x) {
  const float e = fast_exp(x < 20.0f ? x : 20.0f);
  const float n = e * (e + 2.0f);
  const float y = x * (n / (n + 2.0f));
  return x < 20.0f ? y : x;
}

// One reverse step for one element: x_i -> x_{i-1}, given the network output `out` and the
// step's noise `z` (ignored by DDIM and at i = 0, where sigma = 0).
AIGX_HD float step_update(float x, float out, float z, const StepConsts& c, int pred, int mode) {
  float x0 = pred == kPredictX0 ? out : c.sqrt_recip_abar * x - c.sqrt_recipm1_abar * out;
  x0 = x0 < -1.0f ? -1.0f : (x0 > 1.0f ? 1.0f : x0);
  if (mode == kAncestral) return c.c1 * x0 + c.c2 * x + c.sigma * z;
  const float eps = (x - c.sqrt_abar * x0) * c.inv_sqrt_1m_abar;
  return c.sqrt_abar_prev * x0 + c.sqrt_1m_abar_prev * eps;
}

// How the final sample x becomes powers (aigxctl.settings.ALLOC_MAPS, same order).
enum AllocMap : int { kMapAbs = 0, kMapSimplex = 1, kMapRelu = 2 };

// The equal split P / M: what a row gets when its map cannot place it (all zero, NaN).
template <typename T>
AIGX_HD void equal_split(T* p, int m, double total_power) {
  for (int n = 0; n < m; ++n) p[n] = static_cast<T>(total_power / m);
}

// p_n = P w_n / sum w with w_n = |x_n| (abs) or max(x_n, 0) (relu).
template <typename T>
AIGX_HD void normalised_map(const float* x, T* p, int m, double total_power, bool relu) {
  double s = 0.0;
  for (int n = 0; n < m; ++n) {
    const double v = static_cast<double>(x[n]);
    s += relu ? (v > 0.0 ? v : 0.0) : fabs(v);
  }
  if (!(s > 0.0)) return equal_split(p, m, total_power);
  const double scale = total_power / s;
  for (int n = 0; n < m; ++n) {
    const double v = static_cast<double>(x[n]);
    p[n] = static_cast<T>((relu ? (v > 0.0 ? v : 0.0) : fabs(v)) * scale);
  }
}

// p = P proj(x): the Euclidean projection of x onto {f >= 0, sum f = 1}, f_n = max(x_n - theta, 0).
// theta is found like the water level (Michelot 1986): start from all channels active, set theta
// so the active ones add up to 1, drop those at or below it, repeat; theta only rises, so the
// set only shrinks, and it stops when nothing drops (at most M rounds, no sort, no memory).
template <typename T>
AIGX_HD void simplex_map(const float* x, T* p, int m, double total_power) {
  double s = 0.0;
  for (int n = 0; n < m; ++n) s += static_cast<double>(x[n]);
  if (!(fabs(s) < 1e300)) return equal_split(p, m, total_power);  // NaN or infinite
  int active = m;
  double theta = (s - 1.0) / m;
  for (;;) {
    double sum = 0.0;
    int count = 0;
    for (int n = 0; n < m; ++n)
      if (static_cast<double>(x[n]) > theta) {
        sum += static_cast<double>(x[n]);
        ++count;
      }
    if (count == active) break;
    active = count;  // >= 1: theta is below the mean of the previous set, so below its max
    theta = (sum - 1.0) / count;
  }
  for (int n = 0; n < m; ++n) {
    const double f = static_cast<double>(x[n]) - theta;
    p[n] = static_cast<T>((f > 0.0 ? f : 0.0) * total_power);
  }
}

// The sample x (an allocation fraction up to sign and scale) -> feasible powers by `alloc_map`;
// the reference is aigxctl.diffusion.to_allocation.
template <typename T>
AIGX_HD void to_allocation(const float* x, T* p, int m, double total_power, int alloc_map) {
  if (alloc_map == kMapSimplex) return simplex_map(x, p, m, total_power);
  normalised_map(x, p, m, total_power, alloc_map == kMapRelu);
}

// True when every gain of the row is finite and >= 0.
AIGX_HD bool gains_valid(const float* g, int m) {
  bool ok = true;
  for (int n = 0; n < m; ++n) ok &= (g[n] >= 0.0f) & (g[n] <= 3.402823466e38f);  // FLT_MAX
  return ok;
}

// Philox4x32-10 (Salmon et al., SC'11): 4 random 32-bit words from a 128-bit counter and a
// 64-bit key. Counter-based, so every (sample, step, element) draws its own numbers with no state.
struct Philox4 {
  uint32_t v[4];
};

AIGX_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                              uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Four standard normals for elements 4j .. 4j+3 of sample `row` at noise slot `slot` (0 = the
// start sample, k + 1 = step k), by Box-Muller on one Philox block.
AIGX_HD void normal4(uint64_t seed, uint64_t row, uint32_t slot, uint32_t j, float out[4]) {
  const Philox4 r = philox4x32_10(j, slot, static_cast<uint32_t>(row),
                                  static_cast<uint32_t>(row >> 32), static_cast<uint32_t>(seed),
                                  static_cast<uint32_t>(seed >> 32));
  const float two_pi = 6.283185307179586f;
  const float inv32 = 2.3283064365386963e-10f;  // 2^-32
  for (int h = 0; h < 2; ++h) {
    const float u1 = (static_cast<float>(r.v[2 * h]) + 1.0f) * inv32;  // (0, 1]
    const float u2 = static_cast<float>(r.v[2 * h + 1]) * inv32;       // [0, 1)
    const float rad = sqrtf(-2.0f * logf(u1 < 1.0f ? u1 : 1.0f));
    out[2 * h] = rad * cosf(two_pi * u2);
    out[2 * h + 1] = rad * sinf(two_pi * u2);
  }
}

}  // namespace aigx

namespace aigx {

// Where each tensor of a packed fused-MLP sampler lives in one flat float32 buffer. Python fills
// the buffer through aigxctl._core.pack_layout (this function is the only definition of the
// order); the CPU sampler and the CUDA kernel read it through the same offsets.
// Matrices are stored input-major ([K, N], the transpose of torch's Linear.weight), so the inner
// loop over outputs reads consecutive floats.
//   cond_mean, cond_std [M]       condition normalisation
//   w_c1 [M, H], b_c1 [H]         first condition layer (Mish follows)
//   w_cc [H, H], b_cc [H]         second condition layer folded into the condition part of the
//                                 first trunk layer: W0c W2c and W0c b2c + b0 (a per-sample constant)
//   w_x [M, H]                    x part of the first trunk layer
//   step_bias [T, H]              time part of the first trunk layer: W0t time_mlp(i), per step
//   w_2 [H, H], b_2 [H]           second trunk layer
//   w_3 [H, Mp], b_3 [Mp]         output layer, zero-padded to Mp = M rounded up to 16 columns
//                                 so the CPU micro-kernel needs no scalar tail
//   consts [T, 9]                 StepConsts of each step index i
struct PackLayout {
  int m_pad;
  int64_t cond_mean, cond_std, w_c1, b_c1, w_cc, b_cc, w_x, step_bias, w_2, b_2, w_3, b_3, consts;
  int64_t total;
};

AIGX_HD PackLayout pack_layout(int m, int h, int steps) {
  PackLayout l;
  l.m_pad = (m + 15) / 16 * 16;
  int64_t o = 0;
  l.cond_mean = o; o += m;
  l.cond_std = o; o += m;
  l.w_c1 = o; o += static_cast<int64_t>(m) * h;
  l.b_c1 = o; o += h;
  l.w_cc = o; o += static_cast<int64_t>(h) * h;
  l.b_cc = o; o += h;
  l.w_x = o; o += static_cast<int64_t>(m) * h;
  l.step_bias = o; o += static_cast<int64_t>(steps) * h;
  l.w_2 = o; o += static_cast<int64_t>(h) * h;
  l.b_2 = o; o += h;
  l.w_3 = o; o += static_cast<int64_t>(h) * l.m_pad;
  l.b_3 = o; o += l.m_pad;
  l.consts = o; o += static_cast<int64_t>(steps) * 9;
  l.total = o;
  return l;
}

static_assert(sizeof(StepConsts) == 9 * sizeof(float), "StepConsts is packed as 9 floats");

}  // namespace aigx
