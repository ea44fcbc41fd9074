// pybind11 module aigxctl._core: thin wrappers from NumPy buffers (CPU) and raw device pointers
// (CUDA) to the entry points in ops.h. Validation and dtype/device dispatch live in Python
// (aigxctl/core.py: one helper checks every tensor handed to a CUDA entry point); this file checks
// what would otherwise be a memory error and is cheap to check from sizes: shapes, the pack's
// size, the noise's shape, the power budget's count. A device pointer carries no size, so the
// CUDA wrappers take the sizes of the buffers behind them too.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cfloat>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include <pybind11/stl.h>

#include "cpu_pack.h"
#include "denoise.h"  // normal4, PackLayout
#include "fp_mode.h"
#include "isa.h"
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

aigx::FusedSpec make_spec(int m, int hidden, int steps, int pred, int64_t rows, int alloc_map) {
  if (m < 1 || hidden < 1 || steps < 1) throw std::invalid_argument("m, hidden, steps must be >= 1");
  if (pred != aigx::kPredictEps && pred != aigx::kPredictX0) throw std::invalid_argument("pred");
  if (alloc_map != aigx::kMapAbs && alloc_map != aigx::kMapSimplex && alloc_map != aigx::kMapRelu)
    throw std::invalid_argument("alloc_map");
  return aigx::FusedSpec{m, hidden, steps, pred, rows, alloc_map};
}

void check_mode(int mode) {
  if (mode != aigx::kAncestral && mode != aigx::kDdim) throw std::invalid_argument("mode");
}

// Gains as the sampler's float32 rows. Native float32 C-contiguous gains are used as they are
// (the core validates them row by row); any other numbers are converted into `buffer` in one
// pass through float64, and a value that is not in [0, FLT_MAX] as a double (a negative too
// small to survive the rounding included) becomes NaN, so the core flags its row and the
// caller names the original value. One binding for every dtype, read from the array:
// overloads would cost a failed try per call at B = 1.
const float* float_gains(const py::array& gains, std::vector<float>& buffer) {
  using Float64 = py::array_t<double, py::array::c_style | py::array::forcecast>;
  const auto* d = py::detail::array_descriptor_proxy(gains.dtype().ptr());
  constexpr char kNative = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? '<' : '>';
  const bool native = d->byteorder == '=' || d->byteorder == '|' || d->byteorder == kNative;
  const bool c_order = (gains.flags() & py::array::c_style) != 0;
  const auto size = gains.itemsize();
  if (d->kind == 'f' && size == 4 && native && c_order)
    return static_cast<const float*>(gains.data());
  const Float64 as_double = d->kind == 'f' && size == 8 && native && c_order
                                ? py::reinterpret_borrow<Float64>(gains)
                                : Float64::ensure(gains);
  if (!as_double) throw py::error_already_set();
  buffer.resize(static_cast<size_t>(as_double.size()));
  const double* g = as_double.data();
  for (size_t i = 0; i < buffer.size(); ++i)
    buffer[i] = g[i] >= 0.0 && g[i] <= FLT_MAX ? static_cast<float>(g[i]) : NAN;
  return buffer.data();
}

// total_power: one P for every row (a Python float: no array to build at B = 1) or float64
// [1] or [rows]. With float64_out the allocations come back as float64 (converted here, where
// it costs a loop, not a NumPy call, per decision).
std::pair<py::array, int64_t> fused_sample(const aigx::CpuPack& pack, int pred,
                                           const py::array& gains_in,
                                           std::variant<double, CArray<double>> total_power,
                                           std::optional<CArray<float>> noise, uint64_t seed,
                                           int mode, int alloc_map, bool float64_out) {
  require_2d(gains_in, "gains");
  std::vector<float> converted;
  const float* gains = float_gains(gains_in, converted);
  check_mode(mode);
  const int64_t rows = gains_in.shape(0);
  const int m = pack.m, steps = pack.steps;
  const auto spec = make_spec(m, pack.hidden, steps, pred, rows, alloc_map);
  if (gains_in.shape(1) != m) throw std::invalid_argument("gains must have M columns");
  const auto* p_array = std::get_if<CArray<double>>(&total_power);
  const double* p = p_array != nullptr ? p_array->data() : &std::get<double>(total_power);
  const bool per_row = p_array != nullptr && p_array->size() != 1;
  if (per_row && p_array->size() != rows)
    throw std::invalid_argument("total_power must hold 1 or rows values");
  const float* z = nullptr;
  if (noise) {
    if (noise->ndim() != 3 || noise->shape(0) != steps + 1 || noise->shape(1) != rows ||
        noise->shape(2) != m)
      throw std::invalid_argument("noise must be [steps + 1, rows, M]");
    z = noise->data();
  }
  const std::vector<py::ssize_t> shape{rows, static_cast<py::ssize_t>(m)};
  // float64 out: the sampler's float32 rows in a plain buffer, then one NumPy array.
  std::optional<CArray<float>> power32;
  std::optional<CArray<double>> power64;
  std::vector<float> staged;
  float* out = nullptr;
  if (float64_out) {
    power64.emplace(shape);
    staged.resize(static_cast<size_t>(rows) * m);
    out = staged.data();
  } else {
    power32.emplace(shape);
    out = power32->mutable_data();
  }
  int64_t invalid = 0;
  {
    py::gil_scoped_release release;
    invalid = aigx::fused_sample_cpu(spec, pack, gains, p, per_row, z, seed, mode, out);
    if (power64) std::copy(staged.begin(), staged.end(), power64->mutable_data());
  }
  if (power64) return {std::move(*power64), invalid};
  return {std::move(*power32), invalid};
}

void check_dtype(int dtype) {
  if (dtype != 0 && dtype != 1)
    throw std::invalid_argument("dtype must be 0 (float32) or 1 (float64)");
}

void check_rows(int64_t rows, int m) {
  if (rows < 0 || m < 1) throw std::invalid_argument("rows must be >= 0 and m >= 1");
}

// total_power holds `count` values: 1 (one P for all rows) or one per row.
bool per_row(int64_t count, int64_t rows) {
  if (count != 1 && count != rows)
    throw std::invalid_argument("total_power must hold 1 or rows values, got " +
                                std::to_string(count));
  return count != 1;
}

template <typename T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
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
      [](int device, int dtype, std::uintptr_t gains, std::uintptr_t power, std::uintptr_t level,
         std::uintptr_t total_power, int64_t power_count, int64_t rows, int m_, double noise,
         std::uintptr_t stream) {
        check_dtype(dtype);
        check_rows(rows, m_);
        const bool rowwise = per_row(power_count, rows);
        if (!(noise > 0)) throw std::invalid_argument("noise must be > 0");
        py::gil_scoped_release release;
        aigx::waterfill_cuda(device, dtype, ptr<const void>(gains), ptr<void>(power),
                             ptr<double>(level), ptr<const double>(total_power), rowwise, rows,
                             m_, noise, stream);
      },
      py::arg("device"), py::arg("dtype"), py::arg("gains"), py::arg("power"), py::arg("level"),
      py::arg("total_power"), py::arg("power_count"), py::arg("rows"), py::arg("m"),
      py::arg("noise"), py::arg("stream"),
      "Device-pointer water-filling on GPU `device` (dtype 0 = float32, 1 = float64): gains and "
      "power [rows, m], level [rows] float64 (may be 0: null), total_power float64 [power_count] "
      "(1 or rows).");
  m.def(
      "sum_rate_cuda",
      [](int device, int dtype, std::uintptr_t gains, std::uintptr_t power, std::uintptr_t rate,
         int64_t rows, int m_, double noise, std::uintptr_t stream) {
        check_dtype(dtype);
        check_rows(rows, m_);
        if (!(noise > 0)) throw std::invalid_argument("noise must be > 0");
        py::gil_scoped_release release;
        aigx::sum_rate_cuda(device, dtype, ptr<const void>(gains), ptr<const void>(power),
                            ptr<double>(rate), rows, m_, noise, stream);
      },
      py::arg("device"), py::arg("dtype"), py::arg("gains"), py::arg("power"), py::arg("rate"),
      py::arg("rows"), py::arg("m"), py::arg("noise"), py::arg("stream"),
      "Device-pointer sum rate on GPU `device`: gains and power [rows, m], rate [rows] float64.");

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
  // float64 first: what the model API passes (an overload that does not match costs ~0.5 us).
  py::class_<aigx::CpuPack, std::shared_ptr<aigx::CpuPack>>(
      m, "CpuPack",
      "A packed denoiser laid out for the CPU sampler's kernels (f32, or bf16 weights), built "
      "once per model.")
      .def(py::init([](CArray<float> pack, int m_, int hidden, int steps, int precision) {
             make_spec(m_, hidden, steps, 0, 0, 0);
             if (precision != aigx::kF32 && precision != aigx::kBf16)
               throw std::invalid_argument("precision must be 0 (f32) or 1 (bf16)");
             if (pack.ndim() != 1 || pack.size() != aigx::pack_layout(m_, hidden, steps).total)
               throw std::invalid_argument("pack has the wrong size for (m, hidden, steps)");
             return aigx::make_cpu_pack(pack.data(), m_, hidden, steps, precision);
           }),
           py::arg("pack"), py::arg("m"), py::arg("hidden"), py::arg("steps"),
           py::arg("precision") = 0)
      .def_readonly("m", &aigx::CpuPack::m)
      .def_readonly("hidden", &aigx::CpuPack::hidden)
      .def_readonly("steps", &aigx::CpuPack::steps)
      .def_readonly("precision", &aigx::CpuPack::precision);
  m.def("fused_sample", &fused_sample, py::arg("pack"), py::arg("pred"), py::arg("gains"),
        py::arg("total_power"), py::arg("noise"), py::arg("seed"), py::arg("mode"),
        py::arg("alloc_map") = 0, py::arg("float64_out") = false,
        "Fused reverse diffusion on the CPU: raw gains [B, M] (numbers; native C-contiguous "
        "float32 are read in place), total_power a float or float64 [1] or [B] -> (allocations [B, M] "
        "float32, or float64 with float64_out, the number of rows with an invalid gain, whose "
        "allocations are NaN).");
  m.def(
      "fused_sample_cuda",
      [](int device, std::uintptr_t pack, int64_t pack_size, int m_, int hidden, int steps,
         int pred, std::uintptr_t gains, int64_t rows, std::uintptr_t total_power,
         int64_t power_count, std::uintptr_t noise, std::vector<int64_t> noise_shape,
         uint64_t seed, int mode, std::uintptr_t power, std::uintptr_t stream, int alloc_map) {
        check_mode(mode);
        if (rows < 0) throw std::invalid_argument("rows must be >= 0");
        const auto spec = make_spec(m_, hidden, steps, pred, rows, alloc_map);
        if (pack_size != aigx::pack_layout(m_, hidden, steps).total)
          throw std::invalid_argument("pack has the wrong size for (m, hidden, steps)");
        const bool rowwise = per_row(power_count, rows);
        if (noise != 0 && noise_shape != std::vector<int64_t>{steps + 1, rows, m_})
          throw std::invalid_argument("noise must be [steps + 1, rows, M]");
        py::gil_scoped_release release;
        aigx::fused_sample_cuda(device, spec, ptr<const float>(pack), ptr<const float>(gains),
                                ptr<const double>(total_power), rowwise, ptr<const float>(noise),
                                seed, mode, ptr<float>(power), stream);
      },
      py::arg("device"), py::arg("pack"), py::arg("pack_size"), py::arg("m"), py::arg("hidden"),
      py::arg("steps"), py::arg("pred"), py::arg("gains"), py::arg("rows"),
      py::arg("total_power"), py::arg("power_count"), py::arg("noise"), py::arg("noise_shape"),
      py::arg("seed"), py::arg("mode"), py::arg("power"), py::arg("stream"),
      py::arg("alloc_map") = 0,
      "Device-pointer fused sampler on GPU `device`: pack float32 [pack_size], gains and power "
      "[rows, m] float32, total_power float64 [power_count]; noise 0 means Philox normals from "
      "seed, else float32 of shape noise_shape = [steps + 1, rows, m].");
  m.def("philox_normals", &philox_normals, py::arg("seed"), py::arg("rows"), py::arg("slots"),
        py::arg("m"),
        "The normals the CUDA sampler draws when no noise is given, [slots, rows, M] (for tests).");

  m.def("isa", [] { return std::string(aigx::isa_name(aigx::isa_active())); },
        "The instruction-set level the CPU hot loops use now: baseline, avx2 or avx512.");
  m.def("bf16_dot_products", &aigx::cpu_has_avx512_bf16,
        "True when precision bf16 runs on AVX-512 BF16's dot products (else the same sums with "
        "FMAs).");
  m.def("amx_ready", &aigx::cpu_amx_ready,
        "True when precision bf16's hidden layers run on AMX tiles (CPU has them, OS granted).");
  m.def(
      "isa_available",
      [] {
        py::list out;
        for (int level = aigx::kIsaBaseline; level <= aigx::isa_supported(); ++level)
          out.append(aigx::isa_name(level));
        return out;
      },
      "The levels this build and this CPU can run, lowest first.");
  m.def(
      "set_isa",
      [](const std::string& name) {
        for (int level = aigx::kIsaBaseline; level <= aigx::kIsaAvx512; ++level) {
          if (name != aigx::isa_name(level)) continue;
          if (!aigx::set_isa(level))
            throw std::invalid_argument("ISA " + name + " is not available here (best: " +
                                        aigx::isa_name(aigx::isa_supported()) + ")");
          return;
        }
        throw std::invalid_argument("unknown ISA " + name + ": expected baseline, avx2 or avx512");
      },
      py::arg("name"), "Use this level from the next call on; ValueError when unavailable.");
  m.def("fp_mode", [] { return aigx::fp_mode(); },
        "The calling thread's floating-point control word (MXCSR on x86, FPCR on AArch64, 0 "
        "elsewhere); the core never leaves it changed.");
  m.def(
      "set_fp_mode", [](uint64_t v) { aigx::set_fp_mode(v); }, py::arg("mode"),
      "Set the calling thread's control word (for tests of fp_mode; not for normal use).");

  m.def("set_lone_tile", &aigx::set_lone_tile, py::arg("how"),
        "How a lone tile (B <= 16) runs: 0 auto (shared by the pool's threads or alone, "
        "whichever was faster lately), 1 shared, 2 alone.");
  m.def("lone_tile", &aigx::lone_tile);
  m.def("num_threads", [] { return aigx::ThreadPool::instance().num_threads(); },
        "Threads the core's CPU pool uses, the caller included.");
  m.def("set_num_threads", [](int n) { aigx::ThreadPool::instance().set_num_threads(n); },
        py::arg("n"));
}
