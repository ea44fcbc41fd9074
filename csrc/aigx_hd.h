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

// The CPU hot loops are compiled once per instruction-set level and picked at run time: isa.h.
