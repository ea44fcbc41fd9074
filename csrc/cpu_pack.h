// The fused CPU sampler's copy of a packed denoiser (PackLayout, denoise.h), built once per model
// by make_cpu_pack and read by every call. The vectors (condition statistics, biases, step
// constants) are read from the pack as it is; the five weight matrices are laid out again for
// the CPU kernels:
//   f32:  W[k, n] at rows of `ld` floats, ld = N rounded up to 16 plus 16, so that a row starts
//         on a cache line and consecutive rows fall in different L1 sets (a stride of a multiple
//         of 4 KiB / 4 maps a column slice onto 4 of the 64 sets, and the slice the micro-kernel
//         reuses across a tile's rows would be evicted from L1 before its second use); the
//         output layer holds just the columns the widest kernels of this CPU compute
//         (output_columns in sampler_cpu.cpp), in rows of ld = n where they end mid-line (24
//         for M = 20 on AVX2), padded as above where they do not (32 on AVX-512);
//   bf16: W rounded to bfloat16 and paired along K, W[2j, n] and W[2j + 1, n] side by side
//         (the operand order of AVX-512 BF16's dot product), rows of `ld` pairs.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "denoise.h"

namespace aigx {

enum Precision : int { kF32 = 0, kBf16 = 1 };

// A weight matrix [k, n] of the CPU pack: its offset (floats) in the pack's weight buffer and its
// row stride `ld`. With bf16, the matrices that read a hidden layer also have their pairs' offset
// in the pair buffer, rows of `ld` pairs.
struct PackedMatrix {
  int64_t offset = 0;
  int k = 0, n = 0, ld = 0;
  int64_t pair_offset = 0;
};

// What a lone tile of `rows` rows costs lately, shared by the pool's threads and on the calling
// thread alone: the median of the last window of calls run each way (ns; 0 until measured), the
// window being filled (calls of one way: the way in use, or a trial of the other), when the
// other way was last tried or left and how long to wait before trying it (lone_tile_shared in
// sampler_cpu.cpp). Relaxed atomics: calls from several threads at once may mix their times,
// which a heuristic can afford.
struct LoneTileTimes {
  static constexpr int kWindow = 16;
  std::atomic<int64_t> shared_ns{0}, alone_ns{0}, tried_at_ns{0}, switched_at_ns{0};
  static constexpr int64_t kLongestWaitNs = 100'000'000;  // kLoneTileRetry, explained there
  std::atomic<int64_t> retry_ns{kLongestWaitNs};  // the wait before the next trial
  std::atomic<int64_t> window[kWindow]{};
  std::atomic<int> filled{0};
  std::atomic<bool> window_shared{false};  // the way the window's calls ran
  std::atomic<bool> trial{false};          // the window is a trial of the other way
};

struct CpuPack {
  int m = 0, hidden = 0, steps = 0;
  int precision = kF32;
  PackLayout layout{};
  std::vector<float> pack;  // the canonical pack, for the vectors
  PackedMatrix w_c1, w_cc, w_x, w_2, w_3;
  // f32 weights or bf16 pairs (one uint32 per pair), 64-byte aligned.
  std::unique_ptr<float[], void (*)(void*)> weights{nullptr, std::free};
  std::unique_ptr<uint32_t[], void (*)(void*)> pairs{nullptr, std::free};
  mutable LoneTileTimes lone_tile[16];  // by rows - 1 (kTile rows at most)
};

// Copies `pack` (PackLayout of (m, hidden, steps)) into a CPU pack of `precision`.
std::shared_ptr<CpuPack> make_cpu_pack(const float* pack, int m, int hidden, int steps,
                                       int precision);

}  // namespace aigx
