// CPU loops over rows for water-filling and sum rate: the per-row math is in waterfill.h, this
// file only splits rows over the core's thread pool.
#include <algorithm>
#include <cmath>

#include "ops.h"
#include "thread_pool.h"
#include "waterfill.h"

namespace aigx {
namespace {
// Rows per task: below a few thousand values the hand-off costs more than it saves.
int64_t grain_for(int m) { return std::max<int64_t>(1, 4096 / std::max(1, m)); }
}  // namespace

template <typename T>
void waterfill_cpu(const T* gains, T* power, double* level, const double* total_power,
                   bool per_row_power, int64_t rows, int m, double noise) {
  ThreadPool::instance().parallel_for(rows, grain_for(m), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const double p = per_row_power ? total_power[r] : total_power[0];
      const double mu = waterfill_row(gains + r * m, power + r * m, m, p, noise);
      if (level != nullptr) level[r] = mu;
    }
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
