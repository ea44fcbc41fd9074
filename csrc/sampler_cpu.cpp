// Fused CPU sampler: the whole reverse diffusion of the reference denoiser (all T steps, the x0
// clamp, the posterior update and the map to a feasible allocation) in one call, over tiles of
// samples split across the core's thread pool. Work that does not depend on the step is done
// once (condition branch per sample, time branch per model, see PackLayout); per step only the
// x-dependent part of the first trunk layer, the second trunk layer and the output layer run.
// The per-element math is shared with the CUDA kernel through denoise.h; the per-tile loops are
// in sampler_kernels.inc, compiled here once per instruction-set level (isa.h) and picked per
// call. The network runs with subnormals flushed (fp_mode.h) on every thread that runs a tile.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>
#include <vector>

#include "cpu_pack.h"
#include "denoise.h"
#include "fp_mode.h"
#include "isa.h"
#include "ops.h"
#include "thread_pool.h"

#if defined(AIGX_ISA_X86)
#include <immintrin.h>
#endif

namespace aigx {
namespace {

constexpr int kTile = 16;  // samples per task; activations of a tile stay in L1/L2

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

// A weight matrix as the kernels read it: W[k, n] at w[k * ld + n].
struct Weights {
  const float* w;
  int ld;
};

Weights weights(const CpuPack& p, const PackedMatrix& w) {
  return {p.weights.get() + w.offset, w.ld};
}

#define AIGX_K_NS k_baseline
#define AIGX_K_TARGET
#define AIGX_K_LEVEL 0
#include "sampler_kernels.inc"
#undef AIGX_K_NS
#undef AIGX_K_TARGET
#undef AIGX_K_LEVEL

#if defined(AIGX_ISA_X86)
#define AIGX_K_NS k_avx2
#define AIGX_K_TARGET AIGX_TARGET_AVX2
#define AIGX_K_LEVEL 1
#include "sampler_kernels.inc"
#undef AIGX_K_NS
#undef AIGX_K_TARGET
#undef AIGX_K_LEVEL

#define AIGX_K_NS k_avx512
#define AIGX_K_TARGET AIGX_TARGET_AVX512
#define AIGX_K_LEVEL 2
#include "sampler_kernels.inc"
#undef AIGX_K_NS
#undef AIGX_K_TARGET
#undef AIGX_K_LEVEL
#endif

using TileFn = int (*)(const FusedSpec&, const CpuPack&, const float*, int64_t, int, const double*,
                       bool, const float*, uint64_t, int, float*, Scratch&);

TileFn tile_function() {
#if defined(AIGX_ISA_X86)
  switch (isa_active()) {
    case kIsaAvx512: return &k_avx512::sample_tile;
    case kIsaAvx2: return &k_avx2::sample_tile;
    default: break;
  }
#endif
  return &k_baseline::sample_tile;
}

template <typename T>
std::unique_ptr<T[], void (*)(void*)> aligned_array(int64_t count) {
  const size_t bytes = (static_cast<size_t>(count) * sizeof(T) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  return {static_cast<T*>(p), std::free};
}

}  // namespace

std::shared_ptr<CpuPack> make_cpu_pack(const float* pack, int m, int hidden, int steps,
                                       int precision) {
  auto p = std::make_shared<CpuPack>();
  p->m = m;
  p->hidden = hidden;
  p->steps = steps;
  p->precision = precision;
  p->layout = pack_layout(m, hidden, steps);
  const PackLayout& l = p->layout;
  p->pack.assign(pack, pack + l.total);
  int64_t size = 0;
  auto place = [&](PackedMatrix& w, int k, int n) {
    w.k = k;
    w.n = n;
    w.ld = (n + 15) / 16 * 16 + 16;
    w.offset = size;
    size += static_cast<int64_t>(k) * w.ld;
  };
  place(p->w_c1, m, hidden);
  place(p->w_cc, hidden, hidden);
  place(p->w_x, m, hidden);
  place(p->w_2, hidden, hidden);
  place(p->w_3, hidden, l.m_pad);
  p->weights = aligned_array<float>(size);
  auto copy = [&](const PackedMatrix& w, int64_t from) {
    for (int k = 0; k < w.k; ++k)
      std::copy(pack + from + static_cast<int64_t>(k) * w.n,
                pack + from + static_cast<int64_t>(k + 1) * w.n,
                p->weights.get() + w.offset + static_cast<int64_t>(k) * w.ld);
  };
  copy(p->w_c1, l.w_c1);
  copy(p->w_cc, l.w_cc);
  copy(p->w_x, l.w_x);
  copy(p->w_2, l.w_2);
  copy(p->w_3, l.w_3);
  return p;
}

int64_t fused_sample_cpu(const FusedSpec& spec, const CpuPack& pack, const float* gains,
                         const double* total_power, bool per_row_power, const float* noise,
                         uint64_t seed, int mode, float* power) {
  const int64_t tiles = (spec.rows_total + kTile - 1) / kTile;
  const TileFn sample_tile = tile_function();
  std::atomic<int64_t> invalid{0};
  ThreadPool::instance().parallel_for(tiles, 1, [&](int64_t t0, int64_t t1) {
    thread_local Scratch scratch;
    scratch.ensure(spec.m, spec.hidden);
    int64_t bad = 0;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row0 = t * kTile;
      const int rows = static_cast<int>(std::min<int64_t>(kTile, spec.rows_total - row0));
      bad += sample_tile(spec, pack, gains, row0, rows, total_power, per_row_power, noise, seed,
                         mode, power, scratch);
    }
    if (bad != 0) invalid.fetch_add(bad, std::memory_order_relaxed);
  });
  return invalid.load();
}

}  // namespace aigx
