// Stand-ins for the CUDA entry points when the module is built without a CUDA compiler: the
// module still loads, reports no CUDA, and Python keeps every tensor on the CPU path.
#include <stdexcept>

#include "ops.h"

namespace aigx {

bool cuda_built() { return false; }
int cuda_device_count() { return 0; }

void waterfill_cuda(int, int, const void*, void*, double*, const double*, bool, int64_t, int,
                    double, std::uintptr_t) {
  throw std::runtime_error("aigxctl._core was built without CUDA");
}
void sum_rate_cuda(int, int, const void*, const void*, double*, int64_t, int, double,
                   std::uintptr_t) {
  throw std::runtime_error("aigxctl._core was built without CUDA");
}

}  // namespace aigx

namespace aigx {

void fused_sample_cuda(int, const FusedSpec&, const float*, const float*, const double*, bool,
                       const float*, uint64_t, int, float*, std::uintptr_t) {
  throw std::runtime_error("aigxctl._core was built without CUDA");
}

}  // namespace aigx
