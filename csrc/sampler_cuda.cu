// Fused CUDA sampler: one launch runs all T denoising steps for a tile of samples per block.
// Activations live in shared memory, weights are read from global memory (input-major, so the
// threads of a warp, one output each, read consecutive floats), noise comes from the caller or
// from Philox inside the kernel. The per-element math (Mish, the step update, the allocation map,
// the RNG) is the same code the CPU sampler runs (denoise.h).
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda_launch.h"
#include "denoise.h"
#include "ops.h"

namespace aigx {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxTile = 8;

// Y[s, n] = act(sum_k A[s, k] Wt[k, n] + bias[n] + add_rows[s, n]) for the block's `rows` samples.
__device__ void dense_block(const float* a, int rows, int k_dim, const float* __restrict__ wt,
                            int n_dim, const float* __restrict__ bias, const float* add_rows,
                            bool use_mish, float* y) {
  for (int n = threadIdx.x; n < n_dim; n += blockDim.x) {
    float acc[kMaxTile];
#pragma unroll
    for (int s = 0; s < kMaxTile; ++s) acc[s] = 0.0f;
    for (int k = 0; k < k_dim; ++k) {
      const float wv = __ldg(wt + static_cast<int64_t>(k) * n_dim + n);
#pragma unroll
      for (int s = 0; s < kMaxTile; ++s)
        if (s < rows) acc[s] = fmaf(a[s * k_dim + k], wv, acc[s]);
    }
#pragma unroll
    for (int s = 0; s < kMaxTile; ++s) {
      if (s >= rows) break;
      float v = acc[s] + bias[n];
      if (add_rows) v += add_rows[s * n_dim + n];
      y[s * n_dim + n] = use_mish ? mish(v) : v;
    }
  }
}

__global__ void fused_sample_kernel(FusedSpec spec, const float* __restrict__ pack,
                                    const float* __restrict__ gains, const double* total_power,
                                    bool per_row_power, const float* __restrict__ noise,
                                    uint64_t seed, int mode, int tile, float* power) {
  extern __shared__ float smem[];
  const int m = spec.m, hd = spec.hidden;
  const PackLayout l = pack_layout(m, hd, spec.steps);
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * tile;
  const int rows = static_cast<int>(min(static_cast<int64_t>(tile), spec.rows_total - row0));
  float* x = smem;
  float* cz = x + tile * m;  // normalised condition, then the step noise
  float* out = cz + tile * m;  // network output, [tile, m_pad]
  float* h = out + tile * l.m_pad;
  float* u = h + tile * hd;
  float* a1 = u + tile * hd;
  float* a2 = a1 + tile * hd;
  const int64_t plane = spec.rows_total * m;

  for (int e = threadIdx.x; e < rows * m; e += blockDim.x) {
    const int n = e % m;
    cz[e] = (gains[row0 * m + e] - pack[l.cond_mean + n]) / pack[l.cond_std + n];
  }
  __syncthreads();
  dense_block(cz, rows, m, pack + l.w_c1, hd, pack + l.b_c1, nullptr, true, h);
  __syncthreads();
  dense_block(h, rows, hd, pack + l.w_cc, hd, pack + l.b_cc, nullptr, false, u);

  auto load_noise = [&](int slot, float* dst) {
    if (noise != nullptr) {
      for (int e = threadIdx.x; e < rows * m; e += blockDim.x)
        dst[e] = noise[slot * plane + row0 * m + e];
      return;
    }
    const int groups = (m + 3) / 4;
    for (int g = threadIdx.x; g < rows * groups; g += blockDim.x) {
      const int r = g / groups, j = g % groups;
      float four[4];
      normal4(seed, static_cast<uint64_t>(row0 + r), static_cast<uint32_t>(slot),
              static_cast<uint32_t>(j), four);
      for (int q = 0; q < 4 && 4 * j + q < m; ++q) dst[r * m + 4 * j + q] = four[q];
    }
  };

  load_noise(0, x);
  __syncthreads();
  const auto* consts = reinterpret_cast<const StepConsts*>(pack + l.consts);
  for (int k = 0; k < spec.steps; ++k) {
    const int i = spec.steps - 1 - k;
    // a1 = mish(x W_x + u + step_bias[i]): fold the step bias into u's read by adding it here.
    for (int n = threadIdx.x; n < hd; n += blockDim.x) {
      float acc[kMaxTile];
#pragma unroll
      for (int s = 0; s < kMaxTile; ++s) acc[s] = 0.0f;
      for (int kk = 0; kk < m; ++kk) {
        const float wv = __ldg(pack + l.w_x + static_cast<int64_t>(kk) * hd + n);
#pragma unroll
        for (int s = 0; s < kMaxTile; ++s)
          if (s < rows) acc[s] = fmaf(x[s * m + kk], wv, acc[s]);
      }
      const float sb = pack[l.step_bias + static_cast<int64_t>(i) * hd + n];
#pragma unroll
      for (int s = 0; s < kMaxTile; ++s)
        if (s < rows) a1[s * hd + n] = mish(acc[s] + sb + u[s * hd + n]);
    }
    __syncthreads();
    dense_block(a1, rows, hd, pack + l.w_2, hd, pack + l.b_2, nullptr, true, a2);
    __syncthreads();
    dense_block(a2, rows, hd, pack + l.w_3, l.m_pad, pack + l.b_3, nullptr, false, out);
    const bool noisy = mode == kAncestral && i > 0;
    if (noisy) load_noise(k + 1, cz);
    __syncthreads();
    const StepConsts c = consts[i];
    for (int e = threadIdx.x; e < rows * m; e += blockDim.x)
      x[e] = step_update(x[e], out[(e / m) * l.m_pad + e % m], noisy ? cz[e] : 0.0f, c, spec.pred,
                         mode);
    __syncthreads();
  }
  for (int r = threadIdx.x; r < rows; r += blockDim.x) {
    const double p = per_row_power ? total_power[row0 + r] : total_power[0];
    float* pr = power + (row0 + r) * m;
    to_allocation(x + r * m, pr, m, p, spec.alloc_map);
    if (!gains_valid(gains + (row0 + r) * m, m))  // flagged for the caller, as on the CPU
      for (int n = 0; n < m; ++n) pr[n] = __int_as_float(0x7fc00000);
  }
}

}  // namespace

void fused_sample_cuda(int device, const FusedSpec& spec, const float* pack, const float* gains,
                       const double* total_power, bool per_row_power, const float* noise,
                       uint64_t seed, int mode, float* power, std::uintptr_t stream) {
  if (spec.rows_total == 0) return;
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  // As many samples per block as fit in 48 KiB of shared memory, at most kMaxTile.
  const PackLayout l = pack_layout(spec.m, spec.hidden, spec.steps);
  const size_t per_sample =
      sizeof(float) * (2 * static_cast<size_t>(spec.m) + l.m_pad + 4 * spec.hidden);
  const int tile = static_cast<int>(std::min<size_t>(kMaxTile, (48 * 1024) / per_sample));
  if (tile < 1) throw std::invalid_argument("fused CUDA sampler: model too wide for shared memory");
  const auto blocks = static_cast<unsigned>((spec.rows_total + tile - 1) / tile);
  cuda_enter(device, s);
  fused_sample_kernel<<<blocks, kThreads, per_sample * tile, s>>>(
      spec, pack, gains, total_power, per_row_power, noise, seed, mode, tile, power);
  cuda_leave("fused sampler", s);
}

}  // namespace aigx
