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
// Precision: levels are measured from the smallest a_n (d_n = a_n - a_min, w = mu - a_min), so
// rows whose a_n are huge and nearly equal (tiny gains, tiny P) keep their relative accuracy.
// Sums are accumulated in double whatever the storage type.
#pragma once

#include <math.h>

#include "aigx_hd.h"

namespace aigx {

// Water-fills one row of `m` gains into `p` (which doubles as scratch for a_n = s2 / g_n).
// Returns the water level mu (0 for a row with no usable channel, which gets all zeros).
namespace detail {
// One sweep of the active-set iteration over d_n = a_n - a_min: returns sum_{d < bound} d and
// sets k = |{d < bound}|. Branch-free: sum_{d < bound} d = sum_n min(d_n, bound) - (m - k) bound.
// A data-dependent branch here mispredicts about half the time and costs more than the sweep;
// the subtraction loses at most ~m ulps of `bound` (<= P), far below P's own resolution. Two
// accumulators halve the add latency chain.
template <typename T>
AIGX_HD double active_sum(const T* a, int m, double a_min, double bound, int& k) {
  double c0 = 0.0, c1 = 0.0;
  int k0 = 0, k1 = 0;
  int n = 0;
  for (; n + 1 < m; n += 2) {
    const double d0 = static_cast<double>(a[n]) - a_min;
    const double d1 = static_cast<double>(a[n + 1]) - a_min;
    c0 += d0 < bound ? d0 : bound;
    c1 += d1 < bound ? d1 : bound;
    k0 += static_cast<int>(d0 < bound);
    k1 += static_cast<int>(d1 < bound);
  }
  if (n < m) {
    const double d = static_cast<double>(a[n]) - a_min;
    c0 += d < bound ? d : bound;
    k0 += static_cast<int>(d < bound);
  }
  k = k0 + k1;
  return (c0 + c1) - (m - k) * bound;
}
}  // namespace detail

// Water-fills one row of `m` gains into `p` (which doubles as scratch for a_n = s2 / g_n).
// Returns the water level mu: 0 for a row with no usable channel (all powers 0), and NaN for a
// row holding a NaN, infinite or negative gain (all powers NaN), so the caller can validate the
// input without a second pass over it.
template <typename T>
AIGX_HD double waterfill_row(const T* g, T* p, int m, double total_power, double noise) {
  const double inf = 1.0 / 0.0;
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
  // a_min as stored, so the best channel has d = 0 exactly whatever T is.
  const double a_min = static_cast<double>(static_cast<T>(noise / g_max));
  for (int n = 0; n < m; ++n) {
    const double gd = static_cast<double>(g[n]);
    const double q = noise / gd;  // unconditional, so the select is branch-free
    p[n] = static_cast<T>(gd > 0.0 ? q : inf);  // +inf: never gets power
  }
  // Work with d_n = a_n - a_min and w = mu - a_min. The optimum has w <= P (all power on the
  // best channel is the highest level possible), so the first active set is {d_n < P}.
  double w = total_power;
  int active = -1;
  for (;;) {
    int k = 0;
    const double sum_d = detail::active_sum(p, m, a_min, w, k);
    if (k == active) break;  // nothing dropped since the last level: w is final
    active = k;
    w = (total_power + sum_d) / k;
  }
  for (int n = 0; n < m; ++n) {
    const double pn = w - (static_cast<double>(p[n]) - a_min);  // -inf for unusable channels
    p[n] = static_cast<T>(pn > 0.0 ? pn : 0.0);
  }
  return a_min + w;
}

// Sum rate of one row, in bits/s/Hz: sum_n log2(1 + g_n p_n / s2).
template <typename T>
AIGX_HD double sum_rate_row(const T* g, const T* p, int m, double noise) {
  double r = 0.0;
  for (int n = 0; n < m; ++n) {
    r += log2(1.0 + static_cast<double>(g[n]) * static_cast<double>(p[n]) / noise);
  }
  return r;
}

}  // namespace aigx
