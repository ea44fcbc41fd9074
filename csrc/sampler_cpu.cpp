// Fused CPU sampler: the whole reverse diffusion of the reference denoiser (all T steps, the x0
// clamp, the posterior update and the map to a feasible allocation) in one call, over tiles of
// samples split across the core's thread pool. Work that does not depend on the step is done
// once (condition branch per sample, time branch per model, see PackLayout); per step only the
// x-dependent part of the first trunk layer, the second trunk layer and the output layer run.
// The per-element math is shared with the CUDA kernel through denoise.h.
#include <algorithm>
#include <vector>

#include "denoise.h"
#include "ops.h"
#include "thread_pool.h"

namespace aigx {
namespace {

constexpr int kTile = 16;  // samples per task; activations of a tile stay in L1/L2
// Micro-kernel rows (samples). With AVX2, 12 accumulators + 2 weight vectors + 1 broadcast fill
// 15 of the 16 registers; 6 rows measured ~7 % faster than 4 at B = 4096 (the baseline SSE
// clone spills some, and only runs where AVX2 is missing).
constexpr int kRows = 6;
constexpr int kCols = 16;  // micro-kernel columns (outputs)
typedef float v8f __attribute__((vector_size(32)));

// y <- mish(y), a plain loop of its own so that it vectorises.
AIGX_MULTIVERSION
void mish_inplace(float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = mish(y[i]);
}

// One block of R rows x 16 columns (from column n0) of Y = A Wt + bias (+ add_rows), with the
// accumulators in GCC vector registers (12 AVX registers for R = 6; the baseline clone splits each
// into SSE halves). Each k adds one broadcast A value times a row of 16 weights.
template <int R>
__attribute__((always_inline)) inline void block(const float* a, int k_dim, const float* wt,
                                                 int n_dim, int n0, const float* bias,
                                                 const float* add_rows, float* y) {
  v8f acc[R][2] = {};
  for (int k = 0; k < k_dim; ++k) {
    const float* w = wt + static_cast<int64_t>(k) * n_dim + n0;
    v8f w0, w1;
    __builtin_memcpy(&w0, w, sizeof(v8f));
    __builtin_memcpy(&w1, w + 8, sizeof(v8f));
    for (int r = 0; r < R; ++r) {
      const float av = a[static_cast<int64_t>(r) * k_dim + k];
      acc[r][0] += av * w0;
      acc[r][1] += av * w1;
    }
  }
  for (int r = 0; r < R; ++r) {
    float* yr = y + static_cast<int64_t>(r) * n_dim + n0;
    const float* ar = add_rows ? add_rows + static_cast<int64_t>(r) * n_dim + n0 : nullptr;
    for (int j = 0; j < kCols; ++j)
      yr[j] = acc[r][j / 8][j % 8] + bias[n0 + j] + (ar ? ar[j] : 0.0f);
  }
}

// Y[r, :] = act(A[r, :] Wt + bias + add_rows[r, :]) for A [rows, K], Wt [K, N]; act is Mish
// when `use_mish`; add_rows may be null. Column blocks are the outer loop so a K x 16 slice of
// the weights (16 KiB at K = 256) stays in L1 while every row block of the tile uses it. Columns
// past the last multiple of 16 (a hidden width like 100) take a scalar loop.
AIGX_MULTIVERSION
void dense(const float* a, int rows, int k_dim, const float* wt, int n_dim, const float* bias,
           const float* add_rows, bool use_mish, float* y) {
  const int full = n_dim / kCols * kCols;
  for (int n = full; n < n_dim; ++n) {
    for (int r = 0; r < rows; ++r) {
      float v = 0.0f;
      for (int k = 0; k < k_dim; ++k)
        v += a[static_cast<int64_t>(r) * k_dim + k] * wt[static_cast<int64_t>(k) * n_dim + n];
      const int64_t at = static_cast<int64_t>(r) * n_dim + n;
      y[at] = v + bias[n] + (add_rows ? add_rows[at] : 0.0f);
    }
  }
  for (int n0 = 0; n0 < full; n0 += kCols) {
    int r = 0;
    for (; r + kRows <= rows; r += kRows) {
      const int64_t at = static_cast<int64_t>(r) * n_dim;
      block<kRows>(a + static_cast<int64_t>(r) * k_dim, k_dim, wt, n_dim, n0, bias,
                   add_rows ? add_rows + at : nullptr, y + at);
    }
    const int64_t at = static_cast<int64_t>(r) * n_dim;
    const float* ar = a + static_cast<int64_t>(r) * k_dim;
    const float* addr = add_rows ? add_rows + at : nullptr;
    switch (rows - r) {
      case 5: block<5>(ar, k_dim, wt, n_dim, n0, bias, addr, y + at); break;
      case 4: block<4>(ar, k_dim, wt, n_dim, n0, bias, addr, y + at); break;
      case 3: block<3>(ar, k_dim, wt, n_dim, n0, bias, addr, y + at); break;
      case 2: block<2>(ar, k_dim, wt, n_dim, n0, bias, addr, y + at); break;
      case 1: block<1>(ar, k_dim, wt, n_dim, n0, bias, addr, y + at); break;
      default: break;
    }
  }
  if (use_mish) mish_inplace(y, static_cast<int64_t>(rows) * n_dim);
}

struct Scratch {
  std::vector<float> x, c, h, u, a1, a2, out, z;
  void ensure(int m, int hidden) {
    const size_t mh = static_cast<size_t>(kTile) * hidden, mm = static_cast<size_t>(kTile) * m;
    if (x.size() >= mm && h.size() >= mh) return;
    x.assign(mm, 0.f); c.assign(mm, 0.f); z.assign(mm, 0.f);
    out.assign(static_cast<size_t>(kTile) * ((m + 15) / 16 * 16), 0.f);
    h.assign(mh, 0.f); u.assign(mh, 0.f); a1.assign(mh, 0.f); a2.assign(mh, 0.f);
  }
};

AIGX_MULTIVERSION
void sample_tile(const FusedSpec& s, const float* pack, const float* gains, int64_t row0, int rows,
                 const double* total_power, bool per_row_power, const float* noise,
                 uint64_t seed, int mode, float* power, Scratch& w) {
  const int m = s.m, hd = s.hidden;
  const PackLayout l = pack_layout(m, hd, s.steps);
  const auto* consts = reinterpret_cast<const StepConsts*>(pack + l.consts);
  const int64_t plane = s.rows_total * m;  // one noise slot [rows_total, M]

  // Normalised condition -> first condition layer -> per-sample constant u (incl. trunk bias).
  for (int r = 0; r < rows; ++r)
    for (int n = 0; n < m; ++n)
      w.c[r * m + n] = (gains[(row0 + r) * m + n] - pack[l.cond_mean + n]) / pack[l.cond_std + n];
  dense(w.c.data(), rows, m, pack + l.w_c1, hd, pack + l.b_c1, nullptr, true, w.h.data());
  dense(w.h.data(), rows, hd, pack + l.w_cc, hd, pack + l.b_cc, nullptr, false, w.u.data());

  auto load_noise = [&](int slot, float* dst) {
    if (noise != nullptr) {
      std::copy(noise + slot * plane + row0 * m, noise + slot * plane + (row0 + rows) * m, dst);
      return;
    }
    float four[4];
    for (int r = 0; r < rows; ++r)
      for (int n = 0; n < m; n += 4) {
        normal4(seed, static_cast<uint64_t>(row0 + r), static_cast<uint32_t>(slot),
                static_cast<uint32_t>(n / 4), four);
        for (int q = 0; q < 4 && n + q < m; ++q) dst[r * m + n + q] = four[q];
      }
  };

  load_noise(0, w.x.data());
  for (int k = 0; k < s.steps; ++k) {
    const int i = s.steps - 1 - k;
    dense(w.x.data(), rows, m, pack + l.w_x, hd, pack + l.step_bias + static_cast<int64_t>(i) * hd,
          w.u.data(), true, w.a1.data());
    dense(w.a1.data(), rows, hd, pack + l.w_2, hd, pack + l.b_2, nullptr, true, w.a2.data());
    dense(w.a2.data(), rows, hd, pack + l.w_3, l.m_pad, pack + l.b_3, nullptr, false,
          w.out.data());
    const bool noisy = mode == kAncestral && i > 0;
    if (noisy) load_noise(k + 1, w.z.data());
    const StepConsts c = consts[i];
    for (int r = 0; r < rows; ++r)
      for (int n = 0; n < m; ++n) {
        const int e = r * m + n;
        w.x[e] = step_update(w.x[e], w.out[r * l.m_pad + n], noisy ? w.z[e] : 0.0f, c, s.pred, mode);
      }
  }
  for (int r = 0; r < rows; ++r) {
    const double p = per_row_power ? total_power[row0 + r] : total_power[0];
    float* pr = power + (row0 + r) * m;
    to_allocation(w.x.data() + r * m, pr, m, p);
    // Rows with a NaN, infinite or negative gain come back as NaN, so the caller validates
    // without a second pass over the input.
    if (!gains_valid(gains + (row0 + r) * m, m))
      for (int n = 0; n < m; ++n) pr[n] = __builtin_nanf("");
  }
}

}  // namespace

void fused_sample_cpu(const FusedSpec& spec, const float* pack, const float* gains,
                      const double* total_power, bool per_row_power, const float* noise,
                      uint64_t seed, int mode, float* power) {
  const int64_t tiles = (spec.rows_total + kTile - 1) / kTile;
  ThreadPool::instance().parallel_for(tiles, 1, [&](int64_t t0, int64_t t1) {
    thread_local Scratch scratch;
    scratch.ensure(spec.m, spec.hidden);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row0 = t * kTile;
      const int rows = static_cast<int>(std::min<int64_t>(kTile, spec.rows_total - row0));
      sample_tile(spec, pack, gains, row0, rows, total_power, per_row_power, noise, seed, mode,
                  power, scratch);
    }
  });
}

}  // namespace aigx

namespace aigx {

void denoise_step_cpu(float* x, const float* out, const float* z, const float* consts, int64_t n,
                      int pred, int mode) {
  StepConsts c;
  std::copy(consts, consts + 9, reinterpret_cast<float*>(&c));
  ThreadPool::instance().parallel_for(n, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) x[i] = step_update(x[i], out[i], z ? z[i] : 0.0f, c, pred, mode);
  });
}

}  // namespace aigx
