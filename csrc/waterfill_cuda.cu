// CUDA kernels for water-filling and sum rate: one thread per row, running the same per-row
// functions (waterfill.h) as the CPU loop. Launched on the caller's stream (PyTorch's current one).
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "ops.h"
#include "waterfill.h"

namespace aigx {
namespace {

constexpr int kThreads = 128;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

template <typename T>
__global__ void waterfill_kernel(const T* gains, T* power, double* level, const double* total_power,
                                 bool per_row_power, int64_t rows, int m, double noise) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const double p = per_row_power ? total_power[r] : total_power[0];
  const double mu = waterfill_row(gains + r * m, power + r * m, m, p, noise);
  if (level != nullptr) level[r] = mu;
}

template <typename T>
__global__ void sum_rate_kernel(const T* gains, const T* power, double* rate, int64_t rows, int m,
                                double noise) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < rows) rate[r] = sum_rate_row(gains + r * m, power + r * m, m, noise);
}

unsigned blocks_for(int64_t rows) { return static_cast<unsigned>((rows + kThreads - 1) / kThreads); }

}  // namespace

bool cuda_built() { return true; }

int cuda_device_count() {
  int n = 0;
  // No driver or no device is a normal CPU-only machine, not an error.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

void waterfill_cuda(int dtype, const void* gains, void* power, double* level,
                    const double* total_power, bool per_row_power, int64_t rows, int m,
                    double noise, std::uintptr_t stream) {
  if (rows == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (dtype == 0) {
    waterfill_kernel<float><<<blocks_for(rows), kThreads, 0, s>>>(
        static_cast<const float*>(gains), static_cast<float*>(power), level, total_power,
        per_row_power, rows, m, noise);
  } else {
    waterfill_kernel<double><<<blocks_for(rows), kThreads, 0, s>>>(
        static_cast<const double*>(gains), static_cast<double*>(power), level, total_power,
        per_row_power, rows, m, noise);
  }
  check(cudaGetLastError(), "waterfill kernel launch");
}

void sum_rate_cuda(int dtype, const void* gains, const void* power, double* rate, int64_t rows,
                   int m, double noise, std::uintptr_t stream) {
  if (rows == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (dtype == 0) {
    sum_rate_kernel<float><<<blocks_for(rows), kThreads, 0, s>>>(
        static_cast<const float*>(gains), static_cast<const float*>(power), rate, rows, m, noise);
  } else {
    sum_rate_kernel<double><<<blocks_for(rows), kThreads, 0, s>>>(
        static_cast<const double*>(gains), static_cast<const double*>(power), rate, rows, m, noise);
  }
  check(cudaGetLastError(), "sum_rate kernel launch");
}

}  // namespace aigx
