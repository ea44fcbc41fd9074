// Exact water-filling for one row of channel gains, shared by the CPU thread pool and the CUDA
// kernel (see aigx_hd.h).
//
// Problem: maximise sum_n log2(1 + g_n p_n / s2) s.t. p_n >= 0, sum_n p_n = P.
// Optimum:  p_n = max(0, mu - a_n), a_n = s2 / g_n, with the level mu fixed by sum p_n = P.
//
// Algorithm (exact, finite, no tolerance): active-set shrinking. Start from every channel with
// g_n > 0, set mu = (P + sum_{active} a_n) / |active|, drop every channel with a_n >= mu, repeat
// until nothing is dropped. mu never increases and the optimal level never exceeds the current mu,
// so a dropped channel is inactive at the optimum; when nothing is dropped, every active channel
// gets mu - a_n > 0 and the powers add up to P, which is the KKT point. This gives the same answer
// as "sort a_n, find the largest k with (P + a_(1) + ... + a_(k)) / k > a_(k)" but needs no sort
// and no scratch memory (a GPU thread keeps nothing but a few scalars), and each pass is a
// branch-free O(M) sweep the compiler vectorises. Random gains settle in 2-4 passes; the worst
// case is one pass per dropped channel.
//
// Precision: levels are measured from the smallest a_n (d_n = a_n - a_min, w = mu - a_min, d_n
// computed in double), so rows whose a_n are huge and nearly equal (tiny gains, tiny P) keep
// their relative accuracy, in float32 too. Sums are accumulated in double whatever the type.
#pragma once

#include <math.h>

#include "aigx_hd.h"

namespace aigx {

// Lane traits: the level iteration below runs on one row (V = double: the CUDA kernel and the
// CPU's leftover rows) or on several rows at once (V = a GCC vector of doubles, one row per lane:
// the CPU's main loop, waterfill_cpu.cpp). Only the operations that differ are here; each maps
// to a branch-free instruction (minsd / cmpltsd / ... or their packed forms).
template <typename V>
struct Lanes;

template <>
struct Lanes<double> {
  using Count = int;
  static AIGX_HD double splat(double x) { return x; }
  static AIGX_HD double below(double a, double b) { return a < b ? a : 0.0; }
  static AIGX_HD int less(double a, double b) { return a < b ? 1 : 0; }
  static AIGX_HD double to_value(int k) { return static_cast<double>(k); }
  static AIGX_HD bool any_differ(int a, int b) { return a != b; }
  static AIGX_HD double select_differ(int a, int b, double x, double y) { return a != b ? x : y; }
};

// The water level above a_min, w = mu - a_min, for rows whose a_n = s2 / g_n (+inf where
// g_n = 0) are a[0..m), and whose smallest a_n is a_min. Lanes are independent: a lane stops
// changing once its active set is stable, so every lane gets bit for bit what it would get alone.
//
// Each sweep is branch-free: sum_{d < w} d adds d_n or 0 by a select (a data-dependent branch
// there mispredicts about half the time and costs more than the sweep). It sums the active d_n
// alone, never as sum_n min(d_n, w) - (m - k) w, whose cancellation lost ~m ulps of m w: 1e-8 of
// P at M = 1024 without FMA, and results that depended on whether the compiler fused the
// multiply. No product is left to contract, so every level (isa.h) gets the same bits. Two
// accumulators halve the add latency chain. The optimum has w <= P (all power on the best
// channel is the highest level possible), so the first active set is {d_n < P}.
template <typename V, typename A>
AIGX_HD V water_level(const A* a, int m, V a_min, V total_power) {
  using L = Lanes<V>;
  using Count = typename L::Count;
  V w = total_power;
  Count active = Count() - 1;  // no set yet
  for (;;) {
    V c0 = L::splat(0.0), c1 = L::splat(0.0);
    Count k0 = Count(), k1 = Count();
    int n = 0;
    for (; n + 1 < m; n += 2) {
      const V d0 = static_cast<V>(a[n]) - a_min;
      const V d1 = static_cast<V>(a[n + 1]) - a_min;
      c0 += L::below(d0, w);
      c1 += L::below(d1, w);
      k0 += L::less(d0, w);
      k1 += L::less(d1, w);
    }
    if (n < m) {
      const V d = static_cast<V>(a[n]) - a_min;
      c0 += L::below(d, w);
      k0 += L::less(d, w);
    }
    const Count k = k0 + k1;
    if (!L::any_differ(k, active)) return w;  // nothing dropped since the last level: final
    const V sum_d = c0 + c1;
    w = L::select_differ(k, active, (total_power + sum_d) / L::to_value(k), w);
    active = k;
  }
}

// Water-fills one row of `m` gains into `p` (which doubles as scratch for a_n = s2 / g_n; `p` may
// be `g` itself: each p_n is written after the last read of g_n).
// Returns the water level mu: 0 for a row with no usable channel (all powers 0), and NaN for a
// row holding a NaN, infinite or negative gain (all powers NaN), so the caller can validate the
// input without a second pass over it.
template <typename T>
AIGX_HD double waterfill_row(const T* g, T* p, int m, double total_power, double noise) {
  const double inf = HUGE_VAL;
  double g_max = 0.0;
  bool valid = true;
  for (int n = 0; n < m; ++n) {
    const double gd = static_cast<double>(g[n]);
    valid &= (gd >= 0.0) & (gd < inf);  // false for NaN too
    g_max = gd > g_max ? gd : g_max;
  }
  if (!valid || !(g_max > 0.0)) {
    const double fill = valid ? 0.0 : 0.0 / 0.0;
    for (int n = 0; n < m; ++n) p[n] = static_cast<T>(fill);
    return fill;
  }
  const double a_min = noise / g_max;
  if (!(a_min < inf)) {
    // noise / g overflows for every channel (gains below ~1e-308 noise): the gaps between the
    // a_n dwarf any P, so the limit puts the budget on the strongest channel(s).
    int best = 0;
    for (int n = 0; n < m; ++n) best += static_cast<double>(g[n]) == g_max ? 1 : 0;
    for (int n = 0; n < m; ++n)
      p[n] = static_cast<T>(static_cast<double>(g[n]) == g_max ? total_power / best : 0.0);
    return a_min;
  }
  // Store d_n = a_n - a_min (computed in double) rather than a_n: the active channels' d_n are
  // small, so a float32 p keeps them to float precision relative to P, not to a_n.
  for (int n = 0; n < m; ++n) {
    const double gd = static_cast<double>(g[n]);
    const double q = noise / gd;  // unconditional, so the select is branch-free
    p[n] = static_cast<T>(gd > 0.0 ? q - a_min : inf);  // +inf: never gets power
  }
  const double w = water_level<double>(p, m, 0.0, total_power);
  for (int n = 0; n < m; ++n) {
    const double pn = w - static_cast<double>(p[n]);  // -inf for unusable channels
    p[n] = static_cast<T>(pn > 0.0 ? pn : 0.0);
  }
  return a_min + w;
}

// Sum rate of one row, in bits/s/Hz: sum_n log2(1 + g_n p_n / s2). A row with a gain or a
// power that is not finite and >= 0 gets NaN, so the caller can name it without a second pass
// over valid data.
template <typename T>
AIGX_HD double sum_rate_row(const T* g, const T* p, int m, double noise) {
  double r = 0.0;
  const double inf = HUGE_VAL;
  bool valid = true;
  for (int n = 0; n < m; ++n) {
    const double gn = static_cast<double>(g[n]);
    const double pn = static_cast<double>(p[n]);
    valid &= (gn >= 0.0) & (gn < inf) & (pn >= 0.0) & (pn < inf);  // false for NaN too
    // Channels without power add log2(1) = 0 exactly: skipping them saves most of the logs
    // (on T1 only ~8 of 20 channels are active).
    if (pn == 0.0) continue;
    r += log2(1.0 + gn * pn / noise);
  }
  return valid ? r : NAN;
}

}  // namespace aigx
