// pybind11 module aigxctl._core: thin wrappers from NumPy buffers (CPU) and raw device pointers
// (CUDA) to the entry points in ops.h. Validation and dtype/device dispatch live in Python
// (aigxctl/core.py); this file only checks what would otherwise be a memory error.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "ops.h"
#include "thread_pool.h"

namespace py = pybind11;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style>;

void require_2d(const py::array& a, const char* name) {
  if (a.ndim() != 2) throw std::invalid_argument(std::string(name) + " must be 2-D [rows, M]");
}

template <typename T>
py::tuple waterfill(CArray<T> gains, CArray<double> total_power, double noise) {
  require_2d(gains, "gains");
  const int64_t rows = gains.shape(0);
  const int m = static_cast<int>(gains.shape(1));
  const bool per_row = total_power.size() != 1;
  if (per_row && total_power.size() != rows)
    throw std::invalid_argument("total_power must hold 1 or rows values");
  CArray<T> power({rows, static_cast<int64_t>(m)});
  CArray<double> level(rows);
  {
    py::gil_scoped_release release;
    aigx::waterfill_cpu<T>(gains.data(), power.mutable_data(), level.mutable_data(),
                           total_power.data(), per_row, rows, m, noise);
  }
  return py::make_tuple(power, level);
}

template <typename T>
CArray<double> sum_rate(CArray<T> gains, CArray<T> power, double noise) {
  require_2d(gains, "gains");
  if (power.ndim() != 2 || power.shape(0) != gains.shape(0) || power.shape(1) != gains.shape(1))
    throw std::invalid_argument("power must have the shape of gains");
  const int64_t rows = gains.shape(0);
  CArray<double> rate(rows);
  {
    py::gil_scoped_release release;
    aigx::sum_rate_cpu<T>(gains.data(), power.data(), rate.mutable_data(), rows,
                          static_cast<int>(gains.shape(1)), noise);
  }
  return rate;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "aigxctl compiled core: exact batched water-filling and fused diffusion sampling.";

  m.def("waterfill", &waterfill<float>, py::arg("gains"), py::arg("total_power"), py::arg("noise"));
  m.def("waterfill", &waterfill<double>, py::arg("gains"), py::arg("total_power"),
        py::arg("noise"),
        "Water-fill C-contiguous gains [B, M] (float32/float64); total_power is float64 [1] or "
        "[B]. Returns (power [B, M] of the gains' dtype, level [B] float64).");
  m.def("sum_rate", &sum_rate<float>, py::arg("gains"), py::arg("power"), py::arg("noise"));
  m.def("sum_rate", &sum_rate<double>, py::arg("gains"), py::arg("power"), py::arg("noise"),
        "Sum rate in bits/s/Hz of each row, float64 [B].");

  m.def("cuda_built", &aigx::cuda_built, "True when the module was compiled with CUDA kernels.");
  m.def("cuda_device_count", &aigx::cuda_device_count,
        "Usable GPUs seen by the core's CUDA runtime (0 without a driver or device).");
  m.def(
      "waterfill_cuda",
      [](int dtype, std::uintptr_t gains, std::uintptr_t power, std::uintptr_t level,
         std::uintptr_t total_power, bool per_row, int64_t rows, int m_, double noise,
         std::uintptr_t stream) {
        py::gil_scoped_release release;
        aigx::waterfill_cuda(dtype, reinterpret_cast<const void*>(gains),
                             reinterpret_cast<void*>(power), reinterpret_cast<double*>(level),
                             reinterpret_cast<const double*>(total_power), per_row, rows, m_,
                             noise, stream);
      },
      py::arg("dtype"), py::arg("gains"), py::arg("power"), py::arg("level"),
      py::arg("total_power"), py::arg("per_row_power"), py::arg("rows"), py::arg("m"),
      py::arg("noise"), py::arg("stream"),
      "Device-pointer water-filling (dtype 0 = float32, 1 = float64); level may be 0 (null).");
  m.def(
      "sum_rate_cuda",
      [](int dtype, std::uintptr_t gains, std::uintptr_t power, std::uintptr_t rate, int64_t rows,
         int m_, double noise, std::uintptr_t stream) {
        py::gil_scoped_release release;
        aigx::sum_rate_cuda(dtype, reinterpret_cast<const void*>(gains),
                            reinterpret_cast<const void*>(power), reinterpret_cast<double*>(rate),
                            rows, m_, noise, stream);
      },
      py::arg("dtype"), py::arg("gains"), py::arg("power"), py::arg("rate"), py::arg("rows"),
      py::arg("m"), py::arg("noise"), py::arg("stream"));

  m.def("num_threads", [] { return aigx::ThreadPool::instance().num_threads(); },
        "Threads the core's CPU pool uses, the caller included.");
  m.def("set_num_threads", [](int n) { aigx::ThreadPool::instance().set_num_threads(n); },
        py::arg("n"));
}
