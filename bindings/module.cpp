// pybind11 module wavalign._core: validates DLPack arguments once, then calls cpp/.
// Imported only by python/wavalign/_ops.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "tensor_arg.h"
#include "wavalign/sampling.h"

namespace py = pybind11;
using namespace wavalign;

#ifndef WAVALIGN_VERSION
#define WAVALIGN_VERSION "0+unknown"
#endif

namespace {

std::string dims(std::initializer_list<int64_t> shape) {
  std::string out = "[";
  size_t i = 0;
  for (int64_t d : shape) out += (i++ ? ", " : "") + std::to_string(d);
  return out + "]";
}

// Checks a per-row parameter tensor: dtype, shape [N], same device as logits.
template <typename T>
const T* row_param(const py::handle& obj, const char* name, DType dtype, const TensorArg& logits,
                   int64_t n_rows) {
  TensorArg arg = tensor_arg(obj, name);
  require_dtype(arg, {dtype});
  require_shape(arg, {n_rows}, dims({n_rows}).c_str());
  require_same_device(arg, logits);
  return static_cast<const T*>(arg.data);  // capsule owner (obj) outlives the call
}

void sample_tokens(py::handle logits_obj, py::handle temperature, py::handle top_k,
                   py::handle top_p, py::handle min_p, py::handle repetition_penalty,
                   py::handle presence_penalty, py::handle frequency_penalty, py::handle history,
                   py::handle allowed_ranges, uint64_t seed, py::handle offsets,
                   py::handle out_ids, py::handle out_logprobs, py::handle out_raw_logprobs,
                   py::handle out_status, py::handle workspace, uintptr_t cuda_stream) {
  const TensorArg logits = tensor_arg(logits_obj, "logits");
  require_dtype(logits, {DType::Float32, DType::BFloat16, DType::Float16});
  require_shape(logits, {-1, -1}, "[N, V]");
  const int64_t n = logits.shape[0], vocab = logits.shape[1];
  if (vocab <= 0) throw py::value_error("logits must have at least one column (V > 0)");

  SampleTokensArgs a;
  a.logits = logits.data;
  a.logits_dtype = logits.dtype;
  a.n_rows = n;
  a.vocab = vocab;
  a.temperature = row_param<float>(temperature, "temperature", DType::Float32, logits, n);
  a.top_k = row_param<int64_t>(top_k, "top_k", DType::Int64, logits, n);
  a.top_p = row_param<float>(top_p, "top_p", DType::Float32, logits, n);
  a.min_p = row_param<float>(min_p, "min_p", DType::Float32, logits, n);
  a.repetition_penalty =
      row_param<float>(repetition_penalty, "repetition_penalty", DType::Float32, logits, n);
  a.presence_penalty =
      row_param<float>(presence_penalty, "presence_penalty", DType::Float32, logits, n);
  a.frequency_penalty =
      row_param<float>(frequency_penalty, "frequency_penalty", DType::Float32, logits, n);
  a.offsets = row_param<int64_t>(offsets, "offsets", DType::Int64, logits, n);
  a.seed = seed;

  if (!history.is_none()) {
    const TensorArg h = tensor_arg(history, "history");
    require_dtype(h, {DType::Int64});
    require_shape(h, {n, -1}, ("[" + std::to_string(n) + ", H]").c_str());
    require_same_device(h, logits);
    a.history = static_cast<const int64_t*>(h.data);
    a.history_len = h.shape[1];
    if (a.history_len == 0) a.history = nullptr;
  }
  if (!allowed_ranges.is_none()) {
    const TensorArg r = tensor_arg(allowed_ranges, "allowed_ranges");
    require_dtype(r, {DType::Int64});
    require_shape(r, {n, -1, 2}, ("[" + std::to_string(n) + ", R, 2]").c_str());
    require_same_device(r, logits);
    if (r.shape[1] < 1 || r.shape[1] > kMaxAllowedRanges) {
      throw py::value_error("allowed_ranges must hold between 1 and " +
                            std::to_string(kMaxAllowedRanges) + " ranges per row, got " +
                            std::to_string(r.shape[1]));
    }
    a.allowed_ranges = static_cast<const int64_t*>(r.data);
    a.n_ranges = r.shape[1];
  }

  const TensorArg ids = tensor_arg(out_ids, "out_ids");
  require_dtype(ids, {DType::Int64});
  require_shape(ids, {n}, dims({n}).c_str());
  require_same_device(ids, logits);
  const TensorArg lp = tensor_arg(out_logprobs, "out_logprobs");
  require_dtype(lp, {DType::Float32});
  require_shape(lp, {n}, dims({n}).c_str());
  require_same_device(lp, logits);
  const TensorArg raw = tensor_arg(out_raw_logprobs, "out_raw_logprobs");
  require_dtype(raw, {DType::Float32});
  require_shape(raw, {n}, dims({n}).c_str());
  require_same_device(raw, logits);
  const TensorArg status = tensor_arg(out_status, "out_status");
  require_dtype(status, {DType::Int32});
  require_shape(status, {n}, dims({n}).c_str());
  require_same_device(status, logits);
  a.out_ids = static_cast<int64_t*>(ids.data);
  a.out_logprobs = static_cast<float*>(lp.data);
  a.out_raw_logprobs = static_cast<float*>(raw.data);
  a.out_status = static_cast<int32_t*>(status.data);
  if (n == 0) return;

  if (logits.is_cuda()) {
#if defined(WAVALIGN_WITH_CUDA)
    const TensorArg ws = tensor_arg(workspace, "workspace");
    require_dtype(ws, {DType::Float32});
    require_shape(ws, {n, vocab}, dims({n, vocab}).c_str());
    require_same_device(ws, logits);
    a.workspace = static_cast<float*>(ws.data);
    a.cuda_stream = reinterpret_cast<void*>(cuda_stream);
    const char* error = nullptr;
    {
      py::gil_scoped_release release;
      error = sample_tokens_cuda(a);
    }
    if (error != nullptr) throw std::runtime_error(std::string("CUDA sampler failed: ") + error);
#else
    (void)workspace;
    (void)cuda_stream;
    throw py::value_error(
        "logits is on " + logits.device_str() +
        " but this wavalign build has no CUDA kernels; reinstall on a machine with nvcc "
        "(pip install . -C cmake.define.WAVALIGN_CUDA=ON) or move the tensors to CPU");
#endif
  } else {
    py::gil_scoped_release release;
    sample_tokens_cpu(a);
  }
}

py::dict build_info() {
  py::dict info;
  info["version"] = WAVALIGN_VERSION;
#ifdef WAVALIGN_BUILD_TYPE
  info["build_type"] = WAVALIGN_BUILD_TYPE;
#endif
#ifdef WAVALIGN_CXX_COMPILER
  info["cxx_compiler"] = WAVALIGN_CXX_COMPILER;
#endif
#if defined(WAVALIGN_WITH_CUDA)
  info["cuda_kernels"] = true;
  info["cuda_architectures"] = WAVALIGN_CUDA_ARCHS;
#else
  info["cuda_kernels"] = false;
#endif
  info["max_allowed_ranges"] = kMaxAllowedRanges;
  info["num_threads"] = get_num_threads();
  return info;
}

int cuda_device_count() {
#if defined(WAVALIGN_WITH_CUDA)
  int count = 0;
  return cuda_device_available(&count) ? count : 0;
#else
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "wavalign native ops (see python/wavalign/_ops.py for the Python API)";
  m.def("sample_tokens", &sample_tokens, py::arg("logits"), py::arg("temperature"),
        py::arg("top_k"), py::arg("top_p"), py::arg("min_p"), py::arg("repetition_penalty"),
        py::arg("presence_penalty"), py::arg("frequency_penalty"), py::arg("history"),
        py::arg("allowed_ranges"), py::arg("seed"), py::arg("offsets"), py::arg("out_ids"),
        py::arg("out_logprobs"), py::arg("out_raw_logprobs"), py::arg("out_status"),
        py::arg("workspace"), py::arg("cuda_stream"));
  m.def("build_info", &build_info);
  m.def("cuda_device_count", &cuda_device_count,
        "Number of usable CUDA devices (0 without CUDA kernels, driver or GPU).");
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
}
