// CPU loops over rows for water-filling and sum rate. The per-row math is in waterfill.h; here
// rows are split over the core's thread pool and, several at a time, run through the same level
// iteration with one row per lane of a vector of doubles (GCC vector extensions: 8 rows in
// AVX-512 registers, 4 in AVX2 ones, or SSE2 pairs on the baseline; the level is picked per
// call, isa.h). A block whose rows need the special cases (invalid gains, no usable channel)
// and the leftover rows go through waterfill_row one by one; both routes give the same bits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "isa.h"
#include "ops.h"
#include "thread_pool.h"
#include "waterfill.h"

namespace aigx {

typedef double v4d __attribute__((vector_size(32)));
typedef long long v4l __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef double v8d __attribute__((vector_size(64)));
typedef long long v8l __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));

// Lanes of a vector of doubles V (counts in the matching vector of longs C, floats in F).
template <typename V, typename C, typename F>
struct VecLanes {
  using Count = C;
  using Float = F;
  static constexpr int kLanes = sizeof(V) / sizeof(double);
  static V splat(double x) { return V{} + x; }
  static V below(V a, V b) { return a < b ? a : V{}; }
  static C less(V a, V b) { return -(a < b); }  // a lane comparison is -1 (true) or 0
  static V to_value(C k) { return __builtin_convertvector(k, V); }
  static bool all(C m) {
    bool ok = true;
    for (int j = 0; j < kLanes; ++j) ok &= m[j] != 0;
    return ok;
  }
  static bool any_differ(C a, C b) {
    const C d = a != b;
    long long any = 0;
    for (int j = 0; j < kLanes; ++j) any |= d[j];
    return any != 0;
  }
  static V select_differ(C a, C b, V x, V y) { return a != b ? x : y; }
};

template <>
struct Lanes<v4d> : VecLanes<v4d, v4l, v4f> {};
template <>
struct Lanes<v8d> : VecLanes<v8d, v8l, v8f> {};

namespace {

// Rounds each lane through the storage type, as waterfill_row does by storing d_n into T.
template <typename T, typename V>
inline V as_stored(V x) {
  if constexpr (sizeof(T) == sizeof(float)) {
    using F = typename Lanes<V>::Float;
    return __builtin_convertvector(__builtin_convertvector(x, F), V);
  } else {
    return x;
  }
}

// Water-fills rows g[0..kLanes) (row stride m) with one row per lane. Returns false, touching
// nothing, when a row needs waterfill_row's special cases.
template <typename V, typename T>
__attribute__((always_inline)) inline bool waterfill_lane_rows(const T* g, T* p, double* level,
                                                               V total_power, int m,
                                                               double noise, V* a) {
  using L = Lanes<V>;
  using C = typename L::Count;
  constexpr int kLanes = L::kLanes;
  const double inf = 1.0 / 0.0;
  auto gather = [&](int n) {
    V v;
    for (int j = 0; j < kLanes; ++j) v[j] = static_cast<double>(g[j * m + n]);
    return v;
  };
  V g_max = L::splat(0.0);
  C valid = C{} - 1;
  for (int n = 0; n < m; ++n) {
    const V gv = gather(n);
    valid &= (gv >= 0.0) & (gv < inf);
    g_max = gv > g_max ? gv : g_max;
  }
  if (!L::all(valid & (g_max > 0.0))) return false;
  const V noise_v = L::splat(noise);
  const V a_min = noise_v / g_max;
  if (!L::all(a_min < inf)) return false;
  for (int n = 0; n < m; ++n) {
    const V gv = gather(n);
    const V q = noise_v / gv;
    a[n] = as_stored<T>(gv > 0.0 ? q - a_min : L::splat(inf));
  }
  const V w = water_level<V>(a, m, L::splat(0.0), total_power);
  for (int n = 0; n < m; ++n) {
    V pn = w - a[n];
    pn = pn > 0.0 ? pn : L::splat(0.0);
    for (int j = 0; j < kLanes; ++j) p[j * m + n] = static_cast<T>(pn[j]);
  }
  const V mu = a_min + w;
  if (level != nullptr)
    for (int j = 0; j < kLanes; ++j) level[j] = mu[j];
  return true;
}

// Rows [begin, end), kLanes rows at a time through the lanes of V (4 doubles: AVX2, or SSE2
// pairs on the baseline; 8 doubles: AVX-512), the rest and the special rows one by one.
template <typename V, typename T>
__attribute__((always_inline)) inline void waterfill_range(const T* gains, T* power, double* level,
                                                           const double* total_power,
                                                           bool per_row_power, int64_t begin,
                                                           int64_t end, int m, double noise) {
  constexpr int kLanes = Lanes<V>::kLanes;
  // Per-thread a_n scratch for the lanes, aligned by hand to 64 bytes: the wide clones' aligned
  // moves need it, heap blocks only promise 16, and alignof(V) may say less on the baseline.
  thread_local std::vector<double> scratch;
  const size_t need = static_cast<size_t>(kLanes) * m + 8;
  if (scratch.size() < need) scratch.resize(need);
  const auto base = reinterpret_cast<std::uintptr_t>(scratch.data());
  V* lanes = reinterpret_cast<V*>((base + 63) & ~std::uintptr_t{63});
  auto one_row = [&](int64_t r) {
    const double p = per_row_power ? total_power[r] : total_power[0];
    const double mu = waterfill_row(gains + r * m, power + r * m, m, p, noise);
    if (level != nullptr) level[r] = mu;
  };
  int64_t r = begin;
  for (; r + kLanes <= end; r += kLanes) {
    V p;
    for (int j = 0; j < kLanes; ++j) p[j] = per_row_power ? total_power[r + j] : total_power[0];
    if (!waterfill_lane_rows<V>(gains + r * m, power + r * m, level ? level + r : nullptr, p, m,
                                noise, lanes))
      for (int j = 0; j < kLanes; ++j) one_row(r + j);
  }
  for (; r < end; ++r) one_row(r);
}

// One entry per level (isa.h) and storage type.
#define AIGX_WATERFILL_LEVEL(SUFFIX, TARGET, V)                                                 \
  TARGET void waterfill_range_##SUFFIX(const float* g, float* p, double* level,                 \
                                       const double* tp, bool per_row, int64_t b, int64_t e,    \
                                       int m, double noise) {                                   \
    waterfill_range<V>(g, p, level, tp, per_row, b, e, m, noise);                               \
  }                                                                                             \
  TARGET void waterfill_range_##SUFFIX(const double* g, double* p, double* level,               \
                                       const double* tp, bool per_row, int64_t b, int64_t e,    \
                                       int m, double noise) {                                   \
    waterfill_range<V>(g, p, level, tp, per_row, b, e, m, noise);                               \
  }

AIGX_WATERFILL_LEVEL(baseline, , v4d)
#if defined(AIGX_ISA_X86)
AIGX_WATERFILL_LEVEL(avx2, AIGX_TARGET_AVX2, v4d)
AIGX_WATERFILL_LEVEL(avx512, AIGX_TARGET_AVX512, v4d)
#endif
#undef AIGX_WATERFILL_LEVEL

template <typename T>
void waterfill_range_any(int isa, const T* g, T* p, double* level, const double* tp, bool per_row,
                         int64_t b, int64_t e, int m, double noise) {
#if defined(AIGX_ISA_X86)
  if (isa == kIsaAvx512) return waterfill_range_avx512(g, p, level, tp, per_row, b, e, m, noise);
  if (isa == kIsaAvx2) return waterfill_range_avx2(g, p, level, tp, per_row, b, e, m, noise);
#endif
  (void)isa;
  waterfill_range_baseline(g, p, level, tp, per_row, b, e, m, noise);
}

// Rows per task: below a few thousand values the hand-off costs more than it saves.
int64_t grain_for(int m) { return std::max<int64_t>(8, 4096 / std::max(1, m)); }

}  // namespace

template <typename T>
void waterfill_cpu(const T* gains, T* power, double* level, const double* total_power,
                   bool per_row_power, int64_t rows, int m, double noise) {
  const int isa = isa_active();
  ThreadPool::instance().parallel_for(rows, grain_for(m), [&](int64_t begin, int64_t end) {
    waterfill_range_any(isa, gains, power, level, total_power, per_row_power, begin, end, m, noise);
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
