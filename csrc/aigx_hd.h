// AIGX_HD marks per-row math that must compile for both the CPU loop and the CUDA kernel:
// under nvcc it expands to __host__ __device__, under a plain C++ compiler to nothing, so the
// CPU build (and therefore CPU CI) exercises the same math the GPU runs. Not the same bits:
// the CPU uses its own vectorised exp where the GPU calls expf, so results agree within 1e-5.
#pragma once

#if defined(__CUDACC__)
#define AIGX_HD __host__ __device__ __forceinline__
#else
#define AIGX_HD inline
#endif

// Hot loops are compiled twice, for baseline x86-64 and for AVX2 + FMA, and picked at load time,
// so the wheel stays portable and still uses the wide units where they exist.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AIGX_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define AIGX_MULTIVERSION
#endif
