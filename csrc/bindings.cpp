// pybind11 module aigxctl._core: thin wrappers from NumPy buffers (CPU) and raw device pointers
// (CUDA) to the entry points in ops.h. Validation and dtype/device dispatch live in Python
// (aigxctl/core.py); this file only checks what would otherwise be a memory error.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <optional>
#include <stdexcept>

#include <pybind11/stl.h>

#include "denoise.h"
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

aigx::FusedSpec make_spec(int m, int hidden, int steps, int pred, int64_t rows) {
  if (m < 1 || hidden < 1 || steps < 1) throw std::invalid_argument("m, hidden, steps must be >= 1");
  if (pred != aigx::kPredictEps && pred != aigx::kPredictX0) throw std::invalid_argument("pred");
  return aigx::FusedSpec{m, hidden, steps, pred, rows};
}

void check_mode(int mode) {
  if (mode != aigx::kAncestral && mode != aigx::kDdim) throw std::invalid_argument("mode");
}

CArray<float> fused_sample(CArray<float> pack, int m, int hidden, int steps, int pred,
                           CArray<float> gains, CArray<double> total_power,
                           std::optional<CArray<float>> noise, uint64_t seed, int mode) {
  require_2d(gains, "gains");
  check_mode(mode);
  const int64_t rows = gains.shape(0);
  const auto spec = make_spec(m, hidden, steps, pred, rows);
  if (gains.shape(1) != m) throw std::invalid_argument("gains must have M columns");
  if (pack.size() != aigx::pack_layout(m, hidden, steps).total)
    throw std::invalid_argument("pack has the wrong size for (m, hidden, steps)");
  const bool per_row = total_power.size() != 1;
  if (per_row && total_power.size() != rows)
    throw std::invalid_argument("total_power must hold 1 or rows values");
  const float* z = nullptr;
  if (noise) {
    if (noise->ndim() != 3 || noise->shape(0) != steps + 1 || noise->shape(1) != rows ||
        noise->shape(2) != m)
      throw std::invalid_argument("noise must be [steps + 1, rows, M]");
    z = noise->data();
  }
  CArray<float> power({rows, static_cast<int64_t>(m)});
  {
    py::gil_scoped_release release;
    aigx::fused_sample_cpu(spec, pack.data(), gains.data(), total_power.data(), per_row, z, seed,
                           mode, power.mutable_data());
  }
  return power;
}

void denoise_step(CArray<float> x, CArray<float> out, std::optional<CArray<float>> z,
                  CArray<float> consts, int pred, int mode) {
  check_mode(mode);
  if (out.size() != x.size() || (z && z->size() != x.size()) || consts.size() != 9)
    throw std::invalid_argument("x, out, z must have one size; consts must hold 9 floats");
  py::gil_scoped_release release;
  aigx::denoise_step_cpu(x.mutable_data(), out.data(), z ? z->data() : nullptr, consts.data(),
                         x.size(), pred, mode);
}

CArray<float> philox_normals(uint64_t seed, int64_t rows, int slots, int m) {
  CArray<float> out({static_cast<int64_t>(slots), rows, static_cast<int64_t>(m)});
  float* o = out.mutable_data();
  float four[4];
  for (int s = 0; s < slots; ++s)
    for (int64_t r = 0; r < rows; ++r)
      for (int n = 0; n < m; n += 4) {
        aigx::normal4(seed, static_cast<uint64_t>(r), static_cast<uint32_t>(s),
                      static_cast<uint32_t>(n / 4), four);
        for (int q = 0; q < 4 && n + q < m; ++q) o[(s * rows + r) * m + n + q] = four[q];
      }
  return out;
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

  m.def(
      "pack_layout",
      [](int m_, int hidden, int steps) {
        const auto l = aigx::pack_layout(m_, hidden, steps);
        py::dict d;
        d["cond_mean"] = l.cond_mean; d["cond_std"] = l.cond_std; d["w_c1"] = l.w_c1;
        d["b_c1"] = l.b_c1; d["w_cc"] = l.w_cc; d["b_cc"] = l.b_cc; d["w_x"] = l.w_x;
        d["step_bias"] = l.step_bias; d["w_2"] = l.w_2; d["b_2"] = l.b_2; d["w_3"] = l.w_3;
        d["b_3"] = l.b_3; d["consts"] = l.consts; d["total"] = l.total; d["m_pad"] = l.m_pad;
        return d;
      },
      py::arg("m"), py::arg("hidden"), py::arg("steps"),
      "Offsets (in floats) of each tensor in a packed fused-sampler buffer, and its total size.");
  m.def("fused_sample", &fused_sample, py::arg("pack"), py::arg("m"), py::arg("hidden"),
        py::arg("steps"), py::arg("pred"), py::arg("gains"), py::arg("total_power"),
        py::arg("noise"), py::arg("seed"), py::arg("mode"),
        "Fused reverse diffusion on the CPU: raw gains [B, M] float32 -> allocations [B, M].");
  m.def(
      "fused_sample_cuda",
      [](std::uintptr_t pack, int m_, int hidden, int steps, int pred, std::uintptr_t gains,
         int64_t rows, std::uintptr_t total_power, bool per_row, std::uintptr_t noise,
         uint64_t seed, int mode, std::uintptr_t power, std::uintptr_t stream) {
        check_mode(mode);
        const auto spec = make_spec(m_, hidden, steps, pred, rows);
        py::gil_scoped_release release;
        aigx::fused_sample_cuda(spec, reinterpret_cast<const float*>(pack),
                                reinterpret_cast<const float*>(gains),
                                reinterpret_cast<const double*>(total_power), per_row,
                                reinterpret_cast<const float*>(noise), seed, mode,
                                reinterpret_cast<float*>(power), stream);
      },
      py::arg("pack"), py::arg("m"), py::arg("hidden"), py::arg("steps"), py::arg("pred"),
      py::arg("gains"), py::arg("rows"), py::arg("total_power"), py::arg("per_row_power"),
      py::arg("noise"), py::arg("seed"), py::arg("mode"), py::arg("power"), py::arg("stream"),
      "Device-pointer fused sampler; noise 0 means Philox normals from seed.");
  m.def("denoise_step", &denoise_step, py::arg("x"), py::arg("out"), py::arg("z"),
        py::arg("consts"), py::arg("pred"), py::arg("mode"),
        "One reverse step in place for any denoiser's output (CPU, float32).");
  m.def(
      "denoise_step_cuda",
      [](std::uintptr_t x, std::uintptr_t out, std::uintptr_t z, std::uintptr_t consts, int64_t n,
         int pred, int mode, std::uintptr_t stream) {
        check_mode(mode);
        py::gil_scoped_release release;
        aigx::denoise_step_cuda(reinterpret_cast<float*>(x), reinterpret_cast<const float*>(out),
                                reinterpret_cast<const float*>(z),
                                reinterpret_cast<const float*>(consts), n, pred, mode, stream);
      },
      py::arg("x"), py::arg("out"), py::arg("z"), py::arg("consts"), py::arg("n"),
      py::arg("pred"), py::arg("mode"), py::arg("stream"));
  m.def("philox_normals", &philox_normals, py::arg("seed"), py::arg("rows"), py::arg("slots"),
        py::arg("m"),
        "The normals the CUDA sampler draws when no noise is given, [slots, rows, M] (for tests).");

  m.def("num_threads", [] { return aigx::ThreadPool::instance().num_threads(); },
        "Threads the core's CPU pool uses, the caller included.");
  m.def("set_num_threads", [](int n) { aigx::ThreadPool::instance().set_num_threads(n); },
        py::arg("n"));
}
