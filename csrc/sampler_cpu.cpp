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
#include <type_traits>
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
  std::vector<uint16_t> hb, a1b, a2b;  // bf16 layers (rows of an even width)
  void ensure(int m, int hidden) {
    const size_t mh = static_cast<size_t>(kTile) * hidden, mm = static_cast<size_t>(kTile) * m;
    if (x.size() >= mm && h.size() >= mh) return;
    const size_t mh2 = static_cast<size_t>(kTile) * ((hidden + 1) / 2 * 2);
    hb.assign(mh2, 0); a1b.assign(mh2, 0); a2b.assign(mh2, 0);
    x.assign(mm, 0.f); c.assign(mm, 0.f); z.assign(mm, 0.f);
    out.assign(static_cast<size_t>(kTile) * ((m + 15) / 16 * 16), 0.f);
    h.assign(mh, 0.f); u.assign(mh, 0.f); a1.assign(mh, 0.f); a2.assign(mh, 0.f);
  }
};

// A layer's operands as the kernels read them. f32: activations A[r, k] at a[r * lda + k] and
// weights W[k, n] at w[k * ldw + n].
struct F32Operands {
  const float* a;
  int64_t lda;
  const float* w;
  int64_t ldw;
  int k;
  F32Operands from_row(int r) const { return {a + r * lda, lda, w, ldw, k}; }
};

// bf16: activations as bf16 bits, A[r, k] at a[r * lda + k] (lda even), and weights as pairs
// (cpu_pack.h), the pair of rows 2j, 2j + 1 of column n at w[j * ldw + n].
struct Bf16Operands {
  const uint16_t* a;
  int64_t lda;
  const uint32_t* w;
  int64_t ldw;
  int pairs;
  Bf16Operands from_row(int r) const { return {a + r * lda, lda, w, ldw, pairs}; }
};

F32Operands f32_operands(const float* a, int64_t lda, const CpuPack& p, const PackedMatrix& w) {
  return {a, lda, p.weights.get() + w.offset, w.ld, w.k};
}

Bf16Operands bf16_operands(const uint16_t* a, int64_t lda, const CpuPack& p,
                           const PackedMatrix& w) {
  return {a, lda, p.pairs.get() + w.pair_offset, w.ld, (w.k + 1) / 2};
}

// The two bf16 halves of a pair as floats, and a float's bf16 bits (nearest even, subnormals as
// zero): the scalar forms of the kernels' conversions.
inline float bf16_high(uint32_t pair) {
  const uint32_t bits = pair & 0xFFFF0000u;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline float bf16_low(uint32_t pair) { return bf16_high(pair << 16); }

inline uint16_t bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7F800000u) == 0) u &= 0x80000000u;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

#define AIGX_K_BF16 0
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

// AVX-512 with its BF16 dot products, for precision bf16 (the f32 path is k_avx512's).
#undef AIGX_K_BF16
#define AIGX_K_BF16 1
#define AIGX_K_NS k_avx512bf16
#undef AIGX_K_TARGET
#define AIGX_K_TARGET AIGX_TARGET_AVX512BF16
#include "sampler_kernels.inc"
#undef AIGX_K_NS
#undef AIGX_K_TARGET
#undef AIGX_K_LEVEL
#endif
#undef AIGX_K_BF16

using TileFn = int (*)(const FusedSpec&, const CpuPack&, const float*, int64_t, int, const double*,
                       bool, const float*, uint64_t, int, float*, Scratch&);

// The active level's tiles; bf16 at the AVX-512 level uses the BF16 dot products where the CPU
// has them (every other level computes the same sums with FMAs).
TileFn tile_function(int precision) {
#if defined(AIGX_ISA_X86)
  switch (isa_active()) {
    case kIsaAvx512:
      return precision == kBf16 && cpu_has_avx512_bf16() ? &k_avx512bf16::sample_tile
                                                          : &k_avx512::sample_tile;
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
  if (precision != kBf16) return p;
  // The layers that read a hidden layer, as bf16 pairs along K (an odd K's last pair padded
  // with a zero row).
  int64_t pairs = 0;
  for (PackedMatrix* w : {&p->w_cc, &p->w_2, &p->w_3}) {
    w->pair_offset = pairs;
    pairs += static_cast<int64_t>((w->k + 1) / 2) * w->ld;
  }
  p->pairs = aligned_array<uint32_t>(pairs);
  for (const PackedMatrix* w : {&p->w_cc, &p->w_2, &p->w_3}) {
    const float* f = p->weights.get() + w->offset;
    uint32_t* out = p->pairs.get() + w->pair_offset;
    for (int j = 0; j < (w->k + 1) / 2; ++j)
      for (int n = 0; n < w->n; ++n) {
        const uint32_t lo = bf16_bits(f[static_cast<int64_t>(2 * j) * w->ld + n]);
        const uint32_t hi =
            2 * j + 1 < w->k ? bf16_bits(f[static_cast<int64_t>(2 * j + 1) * w->ld + n]) : 0u;
        out[static_cast<int64_t>(j) * w->ld + n] = hi << 16 | lo;
      }
  }
  return p;
}

int64_t fused_sample_cpu(const FusedSpec& spec, const CpuPack& pack, const float* gains,
                         const double* total_power, bool per_row_power, const float* noise,
                         uint64_t seed, int mode, float* power) {
  const int64_t tiles = (spec.rows_total + kTile - 1) / kTile;
  const TileFn sample_tile = tile_function(pack.precision);
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
