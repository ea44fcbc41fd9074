// What every CUDA entry point of the core does around its kernel launch (CUDA sources only).
//
// The core links its own static CUDA runtime, so PyTorch's `torch.cuda.device(...)` (which sets
// the current device of torch's runtime) does not reach it: each entry point selects the GPU its
// pointers live on itself, with cudaSetDevice on the core's runtime. That was chosen over building
// the kernels against torch's runtime (its device guard and stream, as pyg-lib and gsplat do)
// because the core is used without torch too (NumPy in, the CLI's CPU paths), and a wheel built
// against one torch's C++ ABI breaks with the next; the device index and the stream are the only
// two things it needs from torch, and Python passes both. The core's runtime is private, so
// leaving its current device changed affects nobody else.
#pragma once

#include <cuda_runtime.h>

namespace aigx {

// Before a launch: `device` must be a GPU the core sees; it becomes the core's current device.
// An error that earlier work left behind (a sticky error from a faulted kernel, ours or torch's,
// or a failed launch of ours not yet collected) is reported as such, not as this launch's.
void cuda_enter(int device, cudaStream_t stream);

// After a launch: the launch's own error ("<what> launch: ..."); with AIGX_CUDA_SYNC=1 (debug)
// also waits for `stream` and reports an error the kernel itself raised ("<what>: ...").
void cuda_leave(const char* what, cudaStream_t stream);

}  // namespace aigx
