// The floating-point environment the core's hot loops run in. Subnormal floats cost a microcode
// assist per operation on x86 (tens to a hundred cycles), and a network's tiny activations times
// small weights make them; flushing them to zero changes results by less than 1e-37 absolute.
// ScopedFlushDenormals sets flush-to-zero and denormals-are-zero on the calling thread and puts
// back that thread's previous mode when it goes out of scope (exceptions included), so the mode
// of the caller's threads is never left changed. The sampler opens one around its network
// evaluation on every thread that runs it (the caller and the pool's workers), and only there:
// the step update and the map to an allocation see the caller's mode (workers take it for the
// job, ScopedFpMode), so subnormal samples keep their value and the results do not depend on
// which thread ran what. Other architectures: AArch64 sets FPCR.FZ; anything else is a no-op.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64) || (defined(__i386__) && defined(__SSE__))
#include <xmmintrin.h>
#define AIGX_FP_MXCSR 1
#elif defined(__aarch64__) && defined(__GNUC__)
#define AIGX_FP_FPCR 1
#endif

namespace aigx {

// The calling thread's floating-point control word: MXCSR on x86, FPCR on AArch64, 0 elsewhere.
inline uint64_t fp_mode() {
#if defined(AIGX_FP_MXCSR)
  return _mm_getcsr();
#elif defined(AIGX_FP_FPCR)
  uint64_t v;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(v));
  return v;
#else
  return 0;
#endif
}

inline void set_fp_mode(uint64_t v) {
#if defined(AIGX_FP_MXCSR)
  _mm_setcsr(static_cast<unsigned>(v));
#elif defined(AIGX_FP_FPCR)
  __asm__ __volatile__("msr fpcr, %0" : : "r"(v));
#else
  (void)v;
#endif
}

// The bits that flush subnormals: MXCSR FTZ (bit 15) | DAZ (bit 6); FPCR FZ (bit 24).
#if defined(AIGX_FP_MXCSR)
constexpr uint64_t kFlushDenormalBits = 0x8040;
#elif defined(AIGX_FP_FPCR)
constexpr uint64_t kFlushDenormalBits = uint64_t{1} << 24;
#else
constexpr uint64_t kFlushDenormalBits = 0;
#endif

// Runs the calling thread in `mode` (another thread's fp_mode()) until the end of the scope,
// then puts back its own: the pool's workers take the caller's mode for the caller's job, so
// the parts of a job that run outside ScopedFlushDenormals see the caller's mode on every thread.
class ScopedFpMode {
 public:
  explicit ScopedFpMode(uint64_t mode) : saved_(fp_mode()) {
    if (mode != saved_) set_fp_mode(mode);
  }
  ~ScopedFpMode() {
    if (fp_mode() != saved_) set_fp_mode(saved_);
  }
  ScopedFpMode(const ScopedFpMode&) = delete;
  ScopedFpMode& operator=(const ScopedFpMode&) = delete;

 private:
  uint64_t saved_;
};

class ScopedFlushDenormals {
 public:
  ScopedFlushDenormals() : saved_(fp_mode()) {
    if ((saved_ & kFlushDenormalBits) != kFlushDenormalBits)
      set_fp_mode(saved_ | kFlushDenormalBits);
  }
  ~ScopedFlushDenormals() {
    if ((saved_ & kFlushDenormalBits) != kFlushDenormalBits) set_fp_mode(saved_);
  }
  ScopedFlushDenormals(const ScopedFlushDenormals&) = delete;
  ScopedFlushDenormals& operator=(const ScopedFlushDenormals&) = delete;

 private:
  uint64_t saved_;
};

}  // namespace aigx
