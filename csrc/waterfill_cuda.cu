// CUDA kernels for water-filling and sum rate: one thread per row, running the same per-row
// functions (waterfill.h) as the CPU loop. Launched on the caller's stream (PyTorch's current one).
// Water-filling stages each block's rows through shared memory, so global memory is read and
// written by consecutive threads (coalesced) while each thread works on its own row.
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

// A block's rows are one contiguous span of rows * m values: consecutive threads copy it into
// shared memory (row stride `stride`, odd, so the threads' rows fall in different banks), each
// thread water-fills its row there in place (waterfill_row allows p == g), and the span is
// copied back out the same way. Straight from global memory, every load of a warp would touch
// 32 rows m values apart: about m times the memory transactions.
template <typename T>
__global__ void waterfill_staged_kernel(const T* gains, T* power, double* level,
                                        const double* total_power, bool per_row_power,
                                        int64_t rows, int m, double noise, int stride) {
  extern __shared__ unsigned char staged_bytes[];
  T* staged = reinterpret_cast<T*>(staged_bytes);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x;
  const int64_t left = rows - first;
  const int n_rows = left < blockDim.x ? static_cast<int>(left) : static_cast<int>(blockDim.x);
  const int count = n_rows * m;
  const T* src = gains + first * m;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const int row = i / m;
    staged[row * stride + (i - row * m)] = src[i];
  }
  __syncthreads();
  const int t = threadIdx.x;
  if (t < n_rows) {
    const int64_t r = first + t;
    const double p = per_row_power ? total_power[r] : total_power[0];
    T* row = staged + t * stride;
    const double mu = waterfill_row(row, row, m, p, noise);
    if (level != nullptr) level[r] = mu;
  }
  __syncthreads();
  T* dst = power + first * m;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const int row = i / m;
    dst[i] = staged[row * stride + (i - row * m)];
  }
}

// Rows per block of the staged kernel for rows of m values of `size` bytes (a multiple of a
// warp, at most kThreads, within the shared memory every GPU gives a block without opting in),
// or 0 when not even a warp's rows fit (very large m): the direct kernel then.
int staged_rows(int m, int size) {
  constexpr int kSharedBytes = 48 * 1024;
  const int stride = m | 1;
  const int fit = kSharedBytes / (stride * size) / 32 * 32;
  return fit < kThreads ? fit : kThreads;
}

template <typename T>
void launch_waterfill(const T* gains, T* power, double* level, const double* total_power,
                      bool per_row_power, int64_t rows, int m, double noise, cudaStream_t s) {
  const int per_block = staged_rows(m, static_cast<int>(sizeof(T)));
  if (per_block == 0) {
    const auto blocks = static_cast<unsigned>((rows + kThreads - 1) / kThreads);
    waterfill_kernel<T><<<blocks, kThreads, 0, s>>>(gains, power, level, total_power,
                                                    per_row_power, rows, m, noise);
    return;
  }
  const int stride = m | 1;
  const auto blocks = static_cast<unsigned>((rows + per_block - 1) / per_block);
  const size_t shared = static_cast<size_t>(per_block) * stride * sizeof(T);
  waterfill_staged_kernel<T><<<blocks, per_block, shared, s>>>(
      gains, power, level, total_power, per_row_power, rows, m, noise, stride);
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
    launch_waterfill(static_cast<const float*>(gains), static_cast<float*>(power), level,
                     total_power, per_row_power, rows, m, noise, s);
  } else {
    launch_waterfill(static_cast<const double*>(gains), static_cast<double*>(power), level,
                     total_power, per_row_power, rows, m, noise, s);
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
