// CPU loops over rows for water-filling and sum rate. The per-row math is in waterfill.h; here
// rows are split over the core's thread pool and, four at a time, run through the same level
// iteration with one row per lane of a vector of doubles (GCC vector extensions: AVX2 on the
// x86-64-v3 clone, SSE2 pairs on the baseline one). A block whose rows need the special cases
// (invalid gains, no usable channel) and the leftover rows go through waterfill_row one by one;
// both routes give the same bits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ops.h"
#include "thread_pool.h"
#include "waterfill.h"

namespace aigx {

typedef double v4d __attribute__((vector_size(32)));
typedef long long v4l __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

template <>
struct Lanes<v4d> {
  using Count = v4l;
  static v4d splat(double x) { return v4d{x, x, x, x}; }
  static v4d min(v4d a, v4d b) { return a < b ? a : b; }
  static v4l less(v4d a, v4d b) { return -(a < b); }  // a lane comparison is -1 (true) or 0
  static v4d to_value(v4l k) { return __builtin_convertvector(k, v4d); }
  static bool any_differ(v4l a, v4l b) {
    const v4l d = a != b;
    return (d[0] | d[1] | d[2] | d[3]) != 0;
  }
  static v4d select_differ(v4l a, v4l b, v4d x, v4d y) { return a != b ? x : y; }
};

namespace {

constexpr int kLanes = 4;

// Rounds each lane through the storage type, as waterfill_row does by storing d_n into T.
template <typename T>
inline v4d as_stored(v4d x) {
  if constexpr (sizeof(T) == sizeof(float)) {
    return __builtin_convertvector(__builtin_convertvector(x, v4f), v4d);
  } else {
    return x;
  }
}

// Water-fills rows g[0..4) (row stride m) with one row per lane. Returns false, touching
// nothing, when a row needs waterfill_row's special cases.
template <typename T>
__attribute__((always_inline)) inline bool waterfill_4rows(const T* g, T* p, double* level,
                                                           v4d total_power, int m, double noise,
                                                           v4d* a) {
  using L = Lanes<v4d>;
  const double inf = 1.0 / 0.0;
  auto gather = [&](int n) {
    return v4d{static_cast<double>(g[n]), static_cast<double>(g[m + n]),
               static_cast<double>(g[2 * m + n]), static_cast<double>(g[3 * m + n])};
  };
  v4d g_max = L::splat(0.0);
  v4l valid = v4l{} - 1;
  for (int n = 0; n < m; ++n) {
    const v4d gv = gather(n);
    valid &= (gv >= 0.0) & (gv < inf);
    g_max = gv > g_max ? gv : g_max;
  }
  const v4l usable = valid & (g_max > 0.0);
  if ((usable[0] & usable[1] & usable[2] & usable[3]) == 0) return false;
  const v4d noise_v = L::splat(noise);
  const v4d a_min = noise_v / g_max;
  const v4l finite = a_min < inf;
  if ((finite[0] & finite[1] & finite[2] & finite[3]) == 0) return false;
  for (int n = 0; n < m; ++n) {
    const v4d gv = gather(n);
    const v4d q = noise_v / gv;
    a[n] = as_stored<T>(gv > 0.0 ? q - a_min : L::splat(inf));
  }
  const v4d w = water_level<v4d>(a, m, L::splat(0.0), total_power);
  for (int n = 0; n < m; ++n) {
    v4d pn = w - a[n];
    pn = pn > 0.0 ? pn : L::splat(0.0);
    for (int j = 0; j < kLanes; ++j) p[j * m + n] = static_cast<T>(pn[j]);
  }
  const v4d mu = a_min + w;
  if (level != nullptr)
    for (int j = 0; j < kLanes; ++j) level[j] = mu[j];
  return true;
}

template <typename T>
__attribute__((always_inline)) inline void waterfill_range(const T* gains, T* power, double* level,
                                                           const double* total_power,
                                                           bool per_row_power, int64_t begin,
                                                           int64_t end, int m, double noise) {
  // Per-thread a_n scratch for the four lanes, aligned by hand to 32 bytes: the AVX2 clone's
  // aligned moves need it, heap blocks only promise 16, and alignof(v4d) says 16 on the baseline
  // target, so the number is written out.
  thread_local std::vector<double> scratch;
  if (scratch.size() < static_cast<size_t>(kLanes * m + kLanes)) scratch.resize(kLanes * m + kLanes);
  const auto base = reinterpret_cast<std::uintptr_t>(scratch.data());
  v4d* lanes = reinterpret_cast<v4d*>((base + 31) & ~std::uintptr_t{31});
  auto one_row = [&](int64_t r) {
    const double p = per_row_power ? total_power[r] : total_power[0];
    const double mu = waterfill_row(gains + r * m, power + r * m, m, p, noise);
    if (level != nullptr) level[r] = mu;
  };
  int64_t r = begin;
  for (; r + kLanes <= end; r += kLanes) {
    const v4d p = per_row_power ? v4d{total_power[r], total_power[r + 1], total_power[r + 2],
                                      total_power[r + 3]}
                                : Lanes<v4d>::splat(total_power[0]);
    if (!waterfill_4rows(gains + r * m, power + r * m, level ? level + r : nullptr, p, m, noise,
                         lanes))
      for (int j = 0; j < kLanes; ++j) one_row(r + j);
  }
  for (; r < end; ++r) one_row(r);
}

AIGX_MULTIVERSION
void waterfill_range_f32(const float* g, float* p, double* level, const double* total_power,
                         bool per_row_power, int64_t begin, int64_t end, int m, double noise) {
  waterfill_range(g, p, level, total_power, per_row_power, begin, end, m, noise);
}

AIGX_MULTIVERSION
void waterfill_range_f64(const double* g, double* p, double* level, const double* total_power,
                         bool per_row_power, int64_t begin, int64_t end, int m, double noise) {
  waterfill_range(g, p, level, total_power, per_row_power, begin, end, m, noise);
}

void waterfill_range_any(const float* g, float* p, double* level, const double* tp, bool per_row,
                         int64_t b, int64_t e, int m, double noise) {
  waterfill_range_f32(g, p, level, tp, per_row, b, e, m, noise);
}
void waterfill_range_any(const double* g, double* p, double* level, const double* tp, bool per_row,
                         int64_t b, int64_t e, int m, double noise) {
  waterfill_range_f64(g, p, level, tp, per_row, b, e, m, noise);
}

// Rows per task: below a few thousand values the hand-off costs more than it saves.
int64_t grain_for(int m) { return std::max<int64_t>(kLanes, 4096 / std::max(1, m)); }

}  // namespace

template <typename T>
void waterfill_cpu(const T* gains, T* power, double* level, const double* total_power,
                   bool per_row_power, int64_t rows, int m, double noise) {
  ThreadPool::instance().parallel_for(rows, grain_for(m), [&](int64_t begin, int64_t end) {
    waterfill_range_any(gains, power, level, total_power, per_row_power, begin, end, m, noise);
  });
}

template <typename T>
void sum_rate_cpu(const T* gains, const T* power, double* rate, int64_t rows, int m,
                  double noise) {
  ThreadPool::instance().parallel_for(rows, grain_for(m), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) rate[r] = sum_rate_row(gains + r * m, power + r * m, m, noise);
  });
}

template void waterfill_cpu<float>(const float*, float*, double*, const double*, bool, int64_t, int,
                                   double);
template void waterfill_cpu<double>(const double*, double*, double*, const double*, bool, int64_t,
                                    int, double);
template void sum_rate_cpu<float>(const float*, const float*, double*, int64_t, int, double);
template void sum_rate_cpu<double>(const double*, const double*, double*, int64_t, int, double);

}  // namespace aigx
