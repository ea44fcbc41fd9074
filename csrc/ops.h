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

// The CUDA entry points take the index of the GPU the pointers live on and make it current for the
// core's own CUDA runtime before launching (see cuda_enter in waterfill_cuda.cu), then check the
// launch (and, with AIGX_CUDA_SYNC=1, wait for the kernel and check what it did).
// dtype: 0 = float32, 1 = float64. All pointers are device pointers on GPU `device`.
void waterfill_cuda(int device, int dtype, const void* gains, void* power, double* level,
                    const double* total_power, bool per_row_power, int64_t rows, int m,
                    double noise, std::uintptr_t stream);
void sum_rate_cuda(int device, int dtype, const void* gains, const void* power, double* rate,
                   int64_t rows, int m, double noise, std::uintptr_t stream);

// Fused sampler over a packed MLP denoiser (layout: denoise.h, PackLayout). `noise` is
// [steps + 1, rows_total, m] float32 or null (then Philox normals from `seed`); `total_power` is
// [1] or [rows_total]; `power` receives [rows_total, m] float32 allocations.
struct FusedSpec {
  int m;
  int hidden;
  int steps;
  int pred;  // Prediction
  int64_t rows_total;
  int alloc_map = 0;  // AllocMap (denoise.h)
};

struct CpuPack;  // cpu_pack.h

// Returns how many rows held a NaN, infinite or negative gain (their powers are NaN), so the
// caller looks for the culprit only when there is one. `pack` comes from make_cpu_pack.
int64_t fused_sample_cpu(const FusedSpec& spec, const CpuPack& pack, const float* gains,
                         const double* total_power, bool per_row_power, const float* noise,
                         uint64_t seed, int mode, float* power);
// How a lone tile (B <= 16) runs: kLoneTileAuto (the default) shares it between the pool's
// threads or runs it on the caller alone, whichever has been faster lately (a busy core makes
// sharing slower than not); the other two force one way (tests, measurements). The results are
// the same either way.
enum LoneTile : int { kLoneTileAuto = 0, kLoneTileShared = 1, kLoneTileAlone = 2 };
void set_lone_tile(int how);
int lone_tile();
// Same, all pointers on GPU `device`, launched on `stream`.
void fused_sample_cuda(int device, const FusedSpec& spec, const float* pack, const float* gains,
                       const double* total_power, bool per_row_power, const float* noise,
                       uint64_t seed, int mode, float* power, std::uintptr_t stream);

}  // namespace aigx
