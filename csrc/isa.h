// Instruction-set levels of the core's hot loops (the fused sampler's GEMM and Mish, the
// water-filling sweeps). Each loop is compiled once per level in one translation unit (function
// target attributes, so the module stays one portable binary) and the level is picked at run
// time: the best one this CPU runs, unless set_isa() asks for a lower one (aigxctl.core reads
// AIGX_ISA=baseline|avx2|avx512 at import, and tests run every level the machine has).
//   baseline: x86-64 (SSE2), or the plain C++ path on other architectures
//   avx2:     x86-64-v3 (AVX2 + FMA)
//   avx512:   x86-64-v4 (AVX-512 F/BW/CD/DQ/VL), 512-bit vectors
#pragma once

namespace aigx {

enum Isa : int { kIsaBaseline = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

// The best level both this build and this CPU (and its OS) support.
int isa_supported();
// The level the hot loops use now.
int isa_active();
// Use `level` from the next call on; false (nothing changed) when it is not supported here.
bool set_isa(int level);
const char* isa_name(int level);
// True when the CPU has AVX-512 BF16 (and the build its kernels): precision bf16's dot products.
bool cpu_has_avx512_bf16();
// True when the CPU has AMX (tiles and BF16) and the OS granted this process its tile state:
// precision bf16's hidden layers then run on the tiles.
bool cpu_amx_ready();

}  // namespace aigx

// Function attributes that compile one function for a level; only GCC on x86-64 builds the
// wide levels (clang and other architectures get the baseline path alone).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AIGX_ISA_X86 1
#define AIGX_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#define AIGX_TARGET_AVX512 __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#define AIGX_TARGET_AVX512BF16 \
  __attribute__((target("arch=x86-64-v4,avx512bf16,amx-tile,amx-bf16,prefer-vector-width=512")))
#endif
