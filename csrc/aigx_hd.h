// AIGX_HD marks per-row math that must compile for both the CPU loop and the CUDA kernel:
// under nvcc it expands to __host__ __device__, under a plain C++ compiler to nothing, so the
// CPU build (and therefore CPU CI) exercises exactly the code the GPU runs.
#pragma once

#if defined(__CUDACC__)
#define AIGX_HD __host__ __device__ __forceinline__
#else
#define AIGX_HD inline
#endif
