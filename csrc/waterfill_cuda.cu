// CUDA kernels for water-filling and sum rate: one thread per row, running the same per-row
// functions (waterfill.h) as the CPU loop. Launched on the caller's stream (PyTorch's current one).
#include <cuda_runtime.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cuda_launch.h"
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

bool sync_requested() {
  const char* v = std::getenv("AIGX_CUDA_SYNC");
  return v != nullptr && v[0] != '\0' && std::string(v) != "0";
}

bool capturing(cudaStream_t stream) {
  // Inside CUDA-graph capture a stream may not be queried or synchronised (that would invalidate
  // the capture), and the kernels run only when the graph is replayed.
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  return cudaStreamIsCapturing(stream, &status) == cudaSuccess &&
         status != cudaStreamCaptureStatusNone;
}

}  // namespace

void cuda_enter(int device, cudaStream_t stream) {
  const cudaError_t pending = cudaGetLastError();  // the core's runtime, this thread
  if (pending != cudaSuccess)
    throw std::runtime_error(std::string("CUDA error left by earlier work (not this call): ") +
                             cudaGetErrorString(pending));
  int count = 0;
  check(cudaGetDeviceCount(&count), "cudaGetDeviceCount");
  if (device < 0 || device >= count)
    throw std::invalid_argument("GPU index " + std::to_string(device) + " out of range: the core "
                                "sees " + std::to_string(count) + " GPU(s)");
  check(cudaSetDevice(device), "cudaSetDevice");
  if (capturing(stream)) return;
  // A sticky error (a kernel faulted earlier: the context is unusable) surfaces at the first
  // call that reaches the driver; query the stream now so it is reported as what it is.
  const cudaError_t earlier = cudaStreamQuery(stream);
  if (earlier != cudaSuccess && earlier != cudaErrorNotReady) {
    cudaGetLastError();
    throw std::runtime_error("GPU " + std::to_string(device) + " is in an error state from "
                             "earlier work (not this call): " + cudaGetErrorString(earlier));
  }
}

void cuda_leave(const char* what, cudaStream_t stream) {
  check(cudaGetLastError(), (std::string(what) + " launch").c_str());
  if (!sync_requested() || capturing(stream)) return;
  check(cudaStreamSynchronize(stream), (std::string(what) + " (AIGX_CUDA_SYNC=1)").c_str());
}

namespace {

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

void waterfill_cuda(int device, int dtype, const void* gains, void* power, double* level,
                    const double* total_power, bool per_row_power, int64_t rows, int m,
                    double noise, std::uintptr_t stream) {
  if (rows == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  cuda_enter(device, s);
  if (dtype == 0) {
    waterfill_kernel<float><<<blocks_for(rows), kThreads, 0, s>>>(
        static_cast<const float*>(gains), static_cast<float*>(power), level, total_power,
        per_row_power, rows, m, noise);
  } else {
    waterfill_kernel<double><<<blocks_for(rows), kThreads, 0, s>>>(
        static_cast<const double*>(gains), static_cast<double*>(power), level, total_power,
        per_row_power, rows, m, noise);
  }
  cuda_leave("waterfill kernel", s);
}

void sum_rate_cuda(int device, int dtype, const void* gains, const void* power, double* rate,
                   int64_t rows, int m, double noise, std::uintptr_t stream) {
  if (rows == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  cuda_enter(device, s);
  if (dtype == 0) {
    sum_rate_kernel<float><<<blocks_for(rows), kThreads, 0, s>>>(
        static_cast<const float*>(gains), static_cast<const float*>(power), rate, rows, m, noise);
  } else {
    sum_rate_kernel<double><<<blocks_for(rows), kThreads, 0, s>>>(
        static_cast<const double*>(gains), static_cast<const double*>(power), rate, rows, m, noise);
  }
  cuda_leave("sum_rate kernel", s);
}

}  // namespace aigx
