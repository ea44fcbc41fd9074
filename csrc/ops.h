// Entry points of the compiled core, as the bindings see them. CPU functions take host pointers;
// CUDA functions take device pointers and the caller's stream (a cudaStream_t passed as an
// integer so this header, and the bindings, need no CUDA headers).
#pragma once

#include <cstdint>

namespace aigx {

// Water-fills `rows` rows of `m` gains. `total_power` holds one P per row, or one for all when
// `per_row_power` is false. `level` may be null.
template <typename T>
void waterfill_cpu(const T* gains, T* power, double* level, const double* total_power,
                   bool per_row_power, int64_t rows, int m, double noise);

template <typename T>
void sum_rate_cpu(const T* gains, const T* power, double* rate, int64_t rows, int m, double noise);

// True when the module was compiled with CUDA kernels.
bool cuda_built();
// Number of usable GPUs (0 when there is no driver or device, never an error).
int cuda_device_count();

// dtype: 0 = float32, 1 = float64. All pointers are device pointers.
void waterfill_cuda(int dtype, const void* gains, void* power, double* level,
                    const double* total_power, bool per_row_power, int64_t rows, int m,
                    double noise, std::uintptr_t stream);
void sum_rate_cuda(int dtype, const void* gains, const void* power, double* rate, int64_t rows,
                   int m, double noise, std::uintptr_t stream);

}  // namespace aigx
