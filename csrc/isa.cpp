// Run-time choice of the instruction-set level (see isa.h).
#include "isa.h"

#include <atomic>

#if defined(__linux__) && defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace aigx {
namespace {

int detect() {
#if defined(AIGX_ISA_X86)
  __builtin_cpu_init();
  // libgcc's checks include the OS's XSAVE support of the ymm/zmm state.
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vl");
  return v4 ? kIsaAvx512 : (v3 ? kIsaAvx2 : kIsaBaseline);
#else
  return kIsaBaseline;
#endif
}

std::atomic<int>& active() {
  static std::atomic<int> level{isa_supported()};
  return level;
}

}  // namespace

int isa_supported() {
  static const int level = detect();
  return level;
}

int isa_active() { return active().load(std::memory_order_relaxed); }

bool set_isa(int level) {
  if (level < kIsaBaseline || level > isa_supported()) return false;
  active().store(level, std::memory_order_relaxed);
  return true;
}

bool cpu_has_avx512_bf16() {
#if defined(AIGX_ISA_X86)
  static const bool has = isa_supported() == kIsaAvx512 && __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

bool cpu_amx_ready() {
#if defined(AIGX_ISA_X86) && defined(__linux__)
  static const bool ready = [] {
    if (!cpu_has_avx512_bf16()) return false;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool amx = (d >> 22 & 1u) && (d >> 24 & 1u);  // AMX-BF16, AMX-TILE
    // Linux hands out the 8 KiB tile state only on request (ARCH_REQ_XCOMP_PERM for
    // XFEATURE_XTILEDATA), once per process; older kernels refuse and the tiles stay unused.
    constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
    return amx && syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  }();
  return ready;
#else
  return false;
#endif
}

const char* isa_name(int level) {
  switch (level) {
    case kIsaAvx2: return "avx2";
    case kIsaAvx512: return "avx512";
    default: return "baseline";
  }
}

}  // namespace aigx
