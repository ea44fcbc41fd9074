// Fused CPU sampler: the whole reverse diffusion of the reference denoiser (all T steps, the x0
// clamp, the posterior update and the map to a feasible allocation) in one call, over tiles of
// samples split across the core's thread pool, or, for a lone tile (a decision's latency), its
// layers' columns shared by the pool (StageTeam). Work that does not depend on the step is done
// once (condition branch per sample, time branch per model, see PackLayout); per step only the
// x-dependent part of the first trunk layer, the second trunk layer and the output layer run.
// The per-element math is shared with the CUDA kernel through denoise.h; the per-tile loops are
// in sampler_kernels.inc, compiled here once per instruction-set level (isa.h) and picked per
// call. The network runs with subnormals flushed (fp_mode.h) on every thread that runs a tile.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
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

// Batches are handed out in 32 ranges of tiles per thread, not the pool's 4: a tile is ~0.2 ms,
// and a core slowed by another tenant of a shared machine then holds the others up for at most a
// 32nd of its share (with 4, B = 4096 ran 2-25 % slower on a 2-core EPYC VM).
constexpr int kTileChunksPerThread = 32;
constexpr int kTile = 16;  // samples per task; activations of a tile stay in L1/L2
// A lone tile's layers are shared by up to hidden / kTeamShare threads: a share narrower than
// this does not pay for the hand-offs between the stages.
constexpr int kTeamShare = 64;
constexpr int kTeamMax = 32;  // the parts of a stage are bits of one word (StageTeam)
// A team keeps every step's second layer (StageTeam); a tile whose slots would take more runs
// alone (1 MB: 1000 steps of one row of 256, or 64 steps of 16 rows; twice that in bf16).
constexpr int64_t kTeamSlotBytes = 1 << 20;
// How long kLoneTileAuto waits before it tries the way it found slower (ns): at most
// kLoneTileRetry, rarely enough that a slow try costs nothing in the mean, often enough to follow
// a machine whose other work comes and goes; kLoneTileRetrySoon after it left a way because
// that way's last window was slower, which one busy moment on the other core can cause (a
// window is ~16 calls, under a millisecond), so a way is not lost for the full wait by a
// moment; each trial that loses doubles the wait, up to kLoneTileRetry.
constexpr int64_t kLoneTileRetry = LoneTileTimes::kLongestWaitNs;
constexpr int64_t kLoneTileRetrySoon = 10'000'000;
// After a switch of way, calls are not counted until kSwitchCalls of them have run and
// kSwitchNs has passed: they pay for the switch (the worker's 200 us of spinning after its last
// job, the host's own wait before it gives an idle vCPU away, and, back to sharing, the time the
// host takes to run a vCPU left idle at full speed again: on a 2-vCPU Zen 4 VM a decision
// shared ran at 22 us for the first ~1.3 ms after a stretch alone, then at 15, so a trial
// counted from the 33rd call (0.7 ms) judged sharing slower than one thread, at 21.5 us, and
// 15 % of a steady loop's decisions ran alone).
constexpr int kSwitchCalls = 32;
constexpr int64_t kSwitchNs = 2'000'000;

static_assert(sizeof(CpuPack::lone_tile) / sizeof(LoneTileTimes) >= kTile,
              "a lone tile's costs are kept for every row count of a tile");

// Cache-line aligned rows: a team's members write neighbouring columns of one layer, and a line
// that held the end of one share and the start of the next would bounce between their cores.
template <typename T>
struct LineAligned {
  using value_type = T;
  LineAligned() = default;
  template <typename U>
  LineAligned(const LineAligned<U>&) {}  // NOLINT: allocators convert implicitly
  T* allocate(size_t n) {
    void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  bool operator==(const LineAligned&) const { return true; }
  bool operator!=(const LineAligned&) const { return false; }
};

// The values of a team's second-layer slots (Scratch::a2s, or a2sb in bf16, whose rows are
// pairs), and their bytes, which kTeamSlotBytes caps.
inline int64_t step_slot_elems(int steps, int rows, int hidden, bool bf16) {
  return static_cast<int64_t>(steps) * rows * (bf16 ? (hidden + 1) / 2 * 2 : hidden);
}
inline int64_t step_slot_bytes(int steps, int rows, int hidden, bool bf16) {
  return step_slot_elems(steps, rows, hidden, bf16) * (bf16 ? 2 : 4);
}

// A tile's buffers. Run alone, a tile uses one thread's Scratch for everything. Shared by a
// team (StageTeam), the caller's holds the tile's state that the members share (c, h, u, the
// start noise x0 and every step's second layer in a2s / a2sb), and each member's own holds what
// it computes for itself (x, out, z, a1): the caller's own is the caller's Scratch too, which
// is why the team's start noise is x0, not x.
struct Scratch {
  std::vector<float, LineAligned<float>> x, x0, c, h, u, a1, a2, out, z, a2s;
  std::vector<uint16_t, LineAligned<uint16_t>> hb, a1b, a2b, a2sb;  // bf16 (even-width rows)
  void ensure(int m, int hidden) {
    const size_t mh = static_cast<size_t>(kTile) * hidden, mm = static_cast<size_t>(kTile) * m;
    if (x.size() >= mm && h.size() >= mh) return;
    const size_t mh2 = static_cast<size_t>(kTile) * ((hidden + 1) / 2 * 2);
    hb.assign(mh2, 0); a1b.assign(mh2, 0); a2b.assign(mh2, 0);
    x.assign(mm, 0.f); x0.assign(mm, 0.f); c.assign(mm, 0.f); z.assign(mm, 0.f);
    out.assign(static_cast<size_t>(kTile) * ((m + 15) / 16 * 16), 0.f);
    h.assign(mh, 0.f); u.assign(mh, 0.f); a1.assign(mh, 0.f); a2.assign(mh, 0.f);
  }
  // A team's second layers: one slot of `rows` rows per step.
  void ensure_step_slots(int steps, int rows, int hidden, bool bf16) {
    const auto n = static_cast<size_t>(step_slot_elems(steps, rows, hidden, bf16));
    if (bf16 && a2sb.size() < n) a2sb.assign(n, 0);
    if (!bf16 && a2s.size() < n) a2s.assign(n, 0.f);
  }
};

// The calling thread's scratch, large enough for a tile of (m, hidden).
Scratch& own_scratch(int m, int hidden) {
  thread_local Scratch scratch;
  scratch.ensure(m, hidden);
  return scratch;
}

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

// The columns [lo, hi) of a layer of n columns that one share of it computes.
struct Cols {
  int lo, hi, n;
};

// Floats per vector of each level's kernels (their kW, checked where each level is compiled).
constexpr int kVectorFloats[] = {4, 8, 16};

// The output layer's columns that a level's kernels compute: M in whole vectors of the level,
// at most the pack's Mp (the columns past M are the padding's zeros).
inline int output_columns(int m, int m_pad, int level) {
  const int w = kVectorFloats[level];
  return std::min(m_pad, (m + w - 1) / w * w);
}

// Share `part` of `parts` of n columns: whole blocks of 32 (a multiple of every level's vector
// and of an AMX column block), the last share ending at n.
inline Cols share_of(int n, int part, int parts) {
  const int blocks = (n + 31) / 32;
  const int lo = 32 * (blocks * part / parts), hi = 32 * (blocks * (part + 1) / parts);
  return {std::min(lo, n), std::min(hi, n), n};
}

// A tile's stages (TileRun in sampler_kernels.inc): 0 the condition's first layer and the start
// noise, 1 its folded layer, then two per step: the x layer and the second layer, then the
// output layer with the update (the last step's maps to allocations). The folded layer and each
// step's second layer split by columns; the rest run whole.
enum StageKind { kConditionStage, kFoldedStage, kSecondLayerStage, kOutputStage };
inline int stage_count(int steps) { return 2 + 2 * steps; }
inline StageKind stage_kind(int stage) {
  if (stage < 2) return stage == 0 ? kConditionStage : kFoldedStage;
  return stage % 2 == 0 ? kSecondLayerStage : kOutputStage;
}
inline int stage_step(int stage) { return (stage - 2) / 2; }  // 0 .. steps - 1, from stage 2

// How a team runs a stage: its parts claimed by the members (split by columns, or one part
// whole), or run by every member for itself. The steps' output layers but the last are run by
// every member on its own copy of x: a step then needs one hand-off between the cores (its
// second layer's shares), not two (the second layer's, then the one member's output layer and
// update). The last one maps x to the allocations and is run once.
enum StageRole { kSplitStage, kWholeStage, kEveryMemberStage };
inline StageRole stage_role(int stage, int stages) {
  switch (stage_kind(stage)) {
    case kFoldedStage:
    case kSecondLayerStage: return kSplitStage;
    case kOutputStage: return stage == stages - 1 ? kWholeStage : kEveryMemberStage;
    case kConditionStage: break;
  }
  return kWholeStage;
}

// The stages of one tile shared by a team. Every member walks the stages in order: it waits until
// the claimed stages before are done, then claims the parts of the stage it can, its own part
// first (the member of rank r prefers part r, so each member keeps streaming the same columns
// of the weights from its own cache, step after step), then any part left; it runs an
// every-member stage itself. A member that arrives late finds the parts already done claimed
// (and catches up on its copy of x with the output layers), and one alone runs every part, so
// the work is done whoever comes. A member that finds the next step's second layer already
// claimed leaves: it is behind, and the others finish the tile. Each step's second layer has its
// own slot (Scratch::a2s), so a member still reading one (its output layer) while the others are
// steps ahead never sees it overwritten.
class StageTeam {
 public:
  StageTeam(int stages, int parts) : stages_(stages), parts_(parts), claimed_(new Mask[stages]) {}

  int parts() const { return parts_; }
  // The rank of a member joining now, in the order they come (usually the caller first, but a
  // worker still spinning from the last job may be quicker); >= parts(): nothing for it.
  int join() { return ranks_.fetch_add(1, std::memory_order_relaxed); }

  // Runs this member's share of the stages; `run(stage, part, parts)` returns the invalid rows
  // it found, summed here.
  template <typename Run>
  int run(int rank, Run&& run_part) {
    int invalid = 0;
    int first = 0;  // claimed parts in the stages before `st`
    for (int st = 0; st < stages_; ++st) {
      const StageRole role = stage_role(st, stages_);
      if (role == kEveryMemberStage) {
        if (full(st + 1)) return invalid;
        while (done_.load(std::memory_order_acquire) < first) spin_pause();
        invalid += run_part(st, 0, 1);
        continue;
      }
      const int n = role == kSplitStage ? parts_ : 1;
      if (!full(st)) {
        while (done_.load(std::memory_order_acquire) < first) spin_pause();
        for (int q = 0; q < n; ++q) {
          const int part = (rank + q) % n;
          const uint32_t bit = 1u << part;
          if ((claimed_[st].bits.fetch_or(bit, std::memory_order_relaxed) & bit) != 0) continue;
          invalid += run_part(st, part, n);
          done_.fetch_add(1, std::memory_order_acq_rel);
        }
      }
      first += n;
    }
    return invalid;
  }

 private:
  // Whether every part of the claimed stage `st` has been claimed.
  bool full(int st) const {
    const int n = stage_role(st, stages_) == kSplitStage ? parts_ : 1;
    const uint32_t all = n == 32 ? ~0u : (1u << n) - 1;
    return claimed_[st].bits.load(std::memory_order_relaxed) == all;
  }

  struct alignas(64) Mask {
    std::atomic<uint32_t> bits{0};
  };
  const int stages_, parts_;
  std::unique_ptr<Mask[]> claimed_;
  alignas(64) std::atomic<int> done_{0};  // claimed parts done, over all stages
  alignas(64) std::atomic<int> ranks_{0};
};

// Runs the stages alone (team null: every stage whole) or as the member `rank` of `team`.
template <typename Run>
int run_stages(int stages, StageTeam* team, int rank, Run&& run) {
  if (team != nullptr) return team->run(rank, run);
  int invalid = 0;
  for (int st = 0; st < stages; ++st) invalid += run(st, 0, 1);
  return invalid;
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
                       bool, const float*, uint64_t, int, float*, Scratch&, Scratch&, StageTeam*,
                       int);

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
  auto place = [&](PackedMatrix& w, int k, int n, int ld) {
    w.k = k;
    w.n = n;
    w.ld = ld;
    w.offset = size;
    size += static_cast<int64_t>(k) * w.ld;
  };
  const auto padded = [](int n) { return (n + 15) / 16 * 16 + 16; };
  place(p->w_c1, m, hidden, padded(hidden));
  place(p->w_cc, hidden, hidden, padded(hidden));
  place(p->w_x, m, hidden, padded(hidden));
  place(p->w_2, hidden, hidden, padded(hidden));
  // The output layer's rows, where the columns the widest kernels here compute end mid-line,
  // hold just those: a decision streams them from L2 every step, and AVX2's 24 columns of
  // M = 20 took two cache lines of a padded row of 48 floats, 1.5 in a row of 24 (a stride that
  // is no whole number of lines cannot alias L1's sets). Whole lines keep the padding.
  const int out_cols = output_columns(m, l.m_pad, isa_supported());
  place(p->w_3, hidden, out_cols, out_cols % 16 == 0 ? padded(out_cols) : out_cols);
  p->weights = aligned_array<float>(size);
  auto copy = [&](const PackedMatrix& w, int64_t from, int from_ld) {
    for (int k = 0; k < w.k; ++k)
      std::copy_n(pack + from + static_cast<int64_t>(k) * from_ld, w.n,
                  p->weights.get() + w.offset + static_cast<int64_t>(k) * w.ld);
  };
  copy(p->w_c1, l.w_c1, hidden);
  copy(p->w_cc, l.w_cc, hidden);
  copy(p->w_x, l.w_x, hidden);
  copy(p->w_2, l.w_2, hidden);
  copy(p->w_3, l.w_3, l.m_pad);
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

namespace {

std::atomic<int> lone_tile_how{kLoneTileAuto};

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// kLoneTileAuto's choice for a lone tile whose recent costs are `t`: a trial of each way first,
// then the faster one, and a trial of the other now and then (LoneTileTimes::retry_ns) so that
// a change (a core freed, or taken by another process) is seen. Each way is judged by the median of a window of
// its calls (a trial is one window), past those just after a switch (kSwitchCalls): they pay for
// the other way's end or this one's start (the workers' wake-up, the weights moving between the
// cores' caches), and on a VM a core the pool just left idle runs at its full speed for a while
// (one alone ran at 28 us per decision there, then 40 once its idle neighbour was given away),
// and a call now and then is slowed by another tenant, none of which is the way's cost.
// Returns whether to share.
bool lone_tile_shared(LoneTileTimes& t, int64_t now) {
  if (t.trial.load(std::memory_order_relaxed)) return t.window_shared.load(std::memory_order_relaxed);
  const int64_t shared = t.shared_ns.load(std::memory_order_relaxed);
  const int64_t alone = t.alone_ns.load(std::memory_order_relaxed);
  bool way = shared <= alone;
  bool trial = true;
  if (shared == 0 || alone == 0)
    way = shared == 0;
  else if (now - t.tried_at_ns.load(std::memory_order_relaxed) >=
           t.retry_ns.load(std::memory_order_relaxed))
    way = !way;  // the slower one, again
  else
    trial = false;
  if (trial) t.tried_at_ns.store(now, std::memory_order_relaxed);
  if (trial || way != t.window_shared.load(std::memory_order_relaxed)) {
    t.window_shared.store(way, std::memory_order_relaxed);
    t.filled.store(-kSwitchCalls, std::memory_order_relaxed);
    t.switched_at_ns.store(now, std::memory_order_relaxed);
    t.trial.store(trial, std::memory_order_relaxed);
  }
  return way;
}

// A call's cost, into the window of its way; a full window sets the way's cost to its median.
void lone_tile_record(LoneTileTimes& t, bool shared, int64_t start, int64_t ns) {
  if (shared != t.window_shared.load(std::memory_order_relaxed)) return;  // another thread's
  if (start - t.switched_at_ns.load(std::memory_order_relaxed) < kSwitchNs) return;
  const int i = t.filled.fetch_add(1, std::memory_order_relaxed);
  if (i < 0 || i >= LoneTileTimes::kWindow) return;  // a switch's first calls; a full window
  t.window[i].store(std::max<int64_t>(ns, 1), std::memory_order_relaxed);
  if (i != LoneTileTimes::kWindow - 1) return;
  int64_t v[LoneTileTimes::kWindow];
  for (int j = 0; j < LoneTileTimes::kWindow; ++j) v[j] = t.window[j].load(std::memory_order_relaxed);
  std::nth_element(v, v + LoneTileTimes::kWindow / 2, v + LoneTileTimes::kWindow);
  const int64_t median = v[LoneTileTimes::kWindow / 2];
  (shared ? t.shared_ns : t.alone_ns).store(median, std::memory_order_relaxed);
  const int64_t other = (shared ? t.alone_ns : t.shared_ns).load(std::memory_order_relaxed);
  if (t.trial.load(std::memory_order_relaxed)) {
    // A trial that won is taken up from the next call (the way left is tried again after the
    // longest wait); one that lost is tried again twice as late.
    const int64_t retry = t.retry_ns.load(std::memory_order_relaxed);
    t.retry_ns.store(median <= other ? kLoneTileRetry : std::min(2 * retry, kLoneTileRetry),
                     std::memory_order_relaxed);
  } else if (median > other && other != 0) {
    // The way in use has become the slower: it is left from the next call, and tried again soon.
    t.retry_ns.store(kLoneTileRetrySoon, std::memory_order_relaxed);
    t.tried_at_ns.store(now_ns(), std::memory_order_relaxed);
  }
  t.trial.store(false, std::memory_order_relaxed);
  t.filled.store(0, std::memory_order_relaxed);
}

}  // namespace

void set_lone_tile(int how) {
  if (how != kLoneTileAuto && how != kLoneTileShared && how != kLoneTileAlone)
    throw std::invalid_argument("lone tile: 0 auto, 1 shared, 2 alone");
  lone_tile_how.store(how);
}

int lone_tile() { return lone_tile_how.load(); }

int64_t fused_sample_cpu(const FusedSpec& spec, const CpuPack& pack, const float* gains,
                         const double* total_power, bool per_row_power, const float* noise,
                         uint64_t seed, int mode, float* power) {
  const int64_t tiles = (spec.rows_total + kTile - 1) / kTile;
  const TileFn sample_tile = tile_function(pack.precision);
  ThreadPool& pool = ThreadPool::instance();
  const int parts = std::min({pool.num_threads(), spec.hidden / kTeamShare, kTeamMax});
  const int how = lone_tile_how.load(std::memory_order_relaxed);
  const bool bf16 = pack.precision == kBf16;
  if (tiles == 1 && parts > 1 && how != kLoneTileAlone &&
      step_slot_bytes(spec.steps, static_cast<int>(spec.rows_total), spec.hidden, bf16) <=
          kTeamSlotBytes) {
    const auto rows = static_cast<int>(spec.rows_total);
    LoneTileTimes& times = pack.lone_tile[rows - 1];
    const int64_t start = now_ns();
    const bool shared = how == kLoneTileShared || lone_tile_shared(times, start);
    Scratch& scratch = own_scratch(spec.m, spec.hidden);  // the caller's, for every member
    int64_t invalid = 0;
    if (shared) {
      // One tile (B <= kTile, a decision's latency): its layers' columns shared by the pool.
      scratch.ensure_step_slots(spec.steps, rows, spec.hidden, bf16);
      StageTeam team(stage_count(spec.steps), parts);
      std::atomic<int64_t> bad_rows{0};
      pool.share([&] {
        // A member's own scratch before it joins: once it holds a share it must not throw.
        Scratch* own = nullptr;
        try {
          own = &own_scratch(spec.m, spec.hidden);
        } catch (const std::bad_alloc&) {
          return;  // the others do its share
        }
        const int rank = team.join();
        if (rank >= team.parts()) return;
        const int bad = sample_tile(spec, pack, gains, 0, rows, total_power, per_row_power,
                                    noise, seed, mode, power, scratch, *own, &team, rank);
        if (bad != 0) bad_rows.fetch_add(bad, std::memory_order_relaxed);
      });
      invalid = bad_rows.load();
    } else {
      invalid = sample_tile(spec, pack, gains, 0, rows, total_power, per_row_power, noise, seed,
                            mode, power, scratch, scratch, nullptr, 0);
    }
    if (how == kLoneTileAuto) lone_tile_record(times, shared, start, now_ns() - start);
    return invalid;
  }
  std::atomic<int64_t> invalid{0};
  pool.parallel_for(tiles, 1, [&](int64_t t0, int64_t t1) {
    Scratch& scratch = own_scratch(spec.m, spec.hidden);
    int64_t bad = 0;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row0 = t * kTile;
      const int rows = static_cast<int>(std::min<int64_t>(kTile, spec.rows_total - row0));
      bad += sample_tile(spec, pack, gains, row0, rows, total_power, per_row_power, noise, seed,
                         mode, power, scratch, scratch, nullptr, 0);
    }
    if (bad != 0) invalid.fetch_add(bad, std::memory_order_relaxed);
  }, kTileChunksPerThread);
  return invalid.load();
}

}  // namespace aigx
