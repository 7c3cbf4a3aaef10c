// pybind11 module wavalign._core: validates DLPack arguments once, then calls cpp/.
// Imported only by python/wavalign/_ops.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <string>

#include "tensor_arg.h"
#include "wavalign/dtw.h"
#include "wavalign/group_stats.h"
#include "wavalign/interleave.h"
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

#if defined(WAVALIGN_WITH_CUDA)
void raise_if_cuda_error(const char* op, const char* error);
#endif
[[noreturn]] void raise_no_cuda(const TensorArg& arg);

#if defined(WAVALIGN_WITH_CUDA)
#define WAVALIGN_CUDA_FN(fn) (&fn)
#else
#define WAVALIGN_CUDA_FN(fn) (nullptr)  // never called: this build has no CUDA kernels
#endif

// Runs an op on the device of `ref` with the GIL released: the CPU function directly, or
// the CUDA launcher on the caller's stream (raising its error, if any). On CUDA the
// launcher makes ref's device current for the launch (Args::cuda_device, from the DLPack
// device id; every other tensor was checked to be on that device) and restores the
// caller's device; `cuda_stream` must belong to that device (_ops._stream passes
// torch.cuda.current_stream(tensor.device)).
template <typename Args, typename CpuFn, typename CudaFn>
void dispatch(const TensorArg& ref, const char* op, Args& a, uintptr_t cuda_stream, CpuFn cpu,
              CudaFn cuda) {
  if (!ref.is_cuda()) {
    py::gil_scoped_release release;
    cpu(a);
    return;
  }
#if defined(WAVALIGN_WITH_CUDA)
  a.cuda_stream = reinterpret_cast<void*>(cuda_stream);
  a.cuda_device = ref.device_id;
  const char* error = nullptr;
  {
    py::gil_scoped_release release;
    error = cuda(a);
  }
  raise_if_cuda_error(op, error);
#else
  (void)op;
  (void)cuda_stream;
  (void)cuda;
  raise_no_cuda(ref);
#endif
}

// Imports `obj` and checks its dtype, exact shape and device (same as `ref`).
template <typename T>
T* checked(const py::handle& obj, const char* name, DType dtype,
           std::initializer_list<int64_t> shape, const TensorArg& ref) {
  TensorArg arg = tensor_arg(obj, name);
  require_dtype(arg, {dtype});
  require_shape(arg, shape, dims(shape).c_str());
  require_same_device(arg, ref);
  return static_cast<T*>(arg.data);  // the caller's object keeps the memory alive
}

// Checks a per-row parameter tensor: dtype, shape [N], same device as logits.
template <typename T>
const T* row_param(const py::handle& obj, const char* name, DType dtype, const TensorArg& logits,
                   int64_t n_rows) {
  return checked<const T>(obj, name, dtype, {n_rows}, logits);
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

  a.out_ids = checked<int64_t>(out_ids, "out_ids", DType::Int64, {n}, logits);
  a.out_logprobs = checked<float>(out_logprobs, "out_logprobs", DType::Float32, {n}, logits);
  a.out_raw_logprobs =
      checked<float>(out_raw_logprobs, "out_raw_logprobs", DType::Float32, {n}, logits);
  a.out_status = checked<int32_t>(out_status, "out_status", DType::Int32, {n}, logits);
  if (n == 0) return;

  if (logits.is_cuda() && !workspace.is_none())
    a.workspace = checked<float>(workspace, "workspace", DType::Float32, {n, vocab}, logits);
  dispatch(logits, "sample_tokens", a, cuda_stream, sample_tokens_cpu,
           WAVALIGN_CUDA_FN(sample_tokens_cuda));
}

#if defined(WAVALIGN_WITH_CUDA)
void raise_if_cuda_error(const char* op, const char* error) {
  if (error != nullptr) throw std::runtime_error(std::string(op) + " failed on CUDA: " + error);
}
#endif

[[noreturn]] void raise_no_cuda(const TensorArg& arg) {
  throw py::value_error(arg.name + " is on " + arg.device_str() +
                        " but this wavalign build has no CUDA kernels; reinstall on a machine "
                        "with nvcc (pip install . -C cmake.define.WAVALIGN_CUDA=ON) or move the "
                        "tensors to CPU");
}

void group_stats(py::handle rewards_obj, int32_t mode, bool sample_std, double eps,
                 py::handle valid_count, py::handle mean, py::handle std_dev,
                 py::handle variance, py::handle max, py::handle min, py::handle zero_variance,
                 py::handle all_missing, py::handle advantages, uintptr_t cuda_stream) {
  const TensorArg rewards = tensor_arg(rewards_obj, "rewards");
  require_dtype(rewards, {DType::Float32});
  require_shape(rewards, {-1, -1}, "[B, G]");
  if (mode < kAdvantageGrpo || mode > kAdvantageRloo)
    throw py::value_error("advantage mode must be 0 (grpo), 1 (dr_grpo) or 2 (rloo)");
  const int64_t b = rewards.shape[0], g = rewards.shape[1];
  if (g > std::numeric_limits<int32_t>::max())
    throw py::value_error("rewards must have at most 2147483647 samples per group (valid_count is "
                          "int32), got G = " + std::to_string(g));
  // eps arrives as a Python float (double); check it before narrowing to the op's float.
  const float eps_f = static_cast<float>(eps);
  if (!(eps >= 0.0) || !std::isfinite(eps_f) || (eps != 0.0 && eps_f == 0.0))
    throw py::value_error("eps must be a finite number >= 0 that float32 can hold, got " +
                          py::repr(py::float_(eps)).cast<std::string>());
  GroupStatsArgs a;
  a.rewards = static_cast<const float*>(rewards.data);
  a.n_groups = b;
  a.group_size = g;
  a.mode = mode;
  a.sample_std = sample_std;
  a.eps = eps_f;
  a.valid_count = checked<int32_t>(valid_count, "valid_count", DType::Int32, {b}, rewards);
  a.mean = checked<float>(mean, "mean", DType::Float32, {b}, rewards);
  a.std = checked<float>(std_dev, "std", DType::Float32, {b}, rewards);
  a.variance = checked<float>(variance, "variance", DType::Float32, {b}, rewards);
  a.max = checked<float>(max, "max", DType::Float32, {b}, rewards);
  a.min = checked<float>(min, "min", DType::Float32, {b}, rewards);
  a.zero_variance = checked<int8_t>(zero_variance, "zero_variance", DType::Int8, {b}, rewards);
  a.all_missing = checked<int8_t>(all_missing, "all_missing", DType::Int8, {b}, rewards);
  a.advantages = checked<float>(advantages, "advantages", DType::Float32, {b, g}, rewards);
  dispatch(rewards, "group_stats", a, cuda_stream, group_stats_cpu,
           WAVALIGN_CUDA_FN(group_stats_cuda));
}

// Frame features must be finite: a NaN distance would make "least" meaningless. The scan
// tests exponent bits with an integer OR-reduction (vectorisable without fast-math), and
// only looks for the first bad index once it knows there is one.
void require_finite(const TensorArg& arg) {
  const uint32_t* bits = static_cast<const uint32_t*>(arg.data);
  const int64_t count = arg.numel();
  constexpr uint32_t kExponent = 0x7f800000u;  // all ones: inf or NaN
  uint32_t bad = 0;
  for (int64_t i = 0; i < count; ++i) bad |= static_cast<uint32_t>((bits[i] & kExponent) == kExponent);
  if (!bad) return;
  const float* values = static_cast<const float*>(arg.data);
  for (int64_t i = 0; i < count; ++i)
    if (!std::isfinite(values[i]))
      throw py::value_error(arg.name + " holds a non-finite value (NaN or inf) at flat index " +
                            std::to_string(i));
}

// Lengths must lie in [0, frames]: they index the padded frame axis.
void require_lengths(const TensorArg& arg, int64_t frames) {
  const int64_t* values = static_cast<const int64_t*>(arg.data);
  for (int64_t i = 0; i < arg.numel(); ++i)
    if (values[i] < 0 || values[i] > frames)
      throw py::value_error(arg.name + "[" + std::to_string(i) + "] = " + std::to_string(values[i]) +
                            " is outside [0, " + std::to_string(frames) + "] (the padded frame count)");
}

void dtw_nearest(py::handle queries_obj, py::handle query_lengths_obj, py::handle templates_obj,
                 py::handle template_lengths_obj, py::handle template_groups, py::handle hint_groups,
                 py::handle best_index, py::handle best_distance) {
  const TensorArg queries = tensor_arg(queries_obj, "queries");
  const TensorArg templates = tensor_arg(templates_obj, "templates");
  const TensorArg query_lengths = tensor_arg(query_lengths_obj, "query_lengths");
  const TensorArg template_lengths = tensor_arg(template_lengths_obj, "template_lengths");
  for (const TensorArg* arg : {&queries, &templates, &query_lengths, &template_lengths})
    if (arg->is_cuda())
      throw py::value_error("dtw_nearest runs on CPU tensors only; " + arg->name + " is on " +
                            arg->device_str());
  require_dtype(queries, {DType::Float32});
  require_dtype(templates, {DType::Float32});
  require_shape(queries, {-1, -1, -1}, "[Q, Tq, C]");
  require_shape(templates, {-1, -1, queries.shape[2]},
                ("[K, Tt, " + std::to_string(queries.shape[2]) + "] (C as in queries)").c_str());
  const int64_t n_queries = queries.shape[0], n_templates = templates.shape[0];
  require_dtype(query_lengths, {DType::Int64});
  require_shape(query_lengths, {n_queries}, ("[" + std::to_string(n_queries) + "]").c_str());
  require_dtype(template_lengths, {DType::Int64});
  require_shape(template_lengths, {n_templates}, ("[" + std::to_string(n_templates) + "]").c_str());
  require_lengths(query_lengths, queries.shape[1]);
  require_lengths(template_lengths, templates.shape[1]);
  require_finite(queries);
  require_finite(templates);

  DtwNearestArgs a;
  a.queries = static_cast<const float*>(queries.data);
  a.query_lengths = static_cast<const int64_t*>(query_lengths.data);
  a.templates = static_cast<const float*>(templates.data);
  a.template_lengths = static_cast<const int64_t*>(template_lengths.data);
  a.n_queries = n_queries;
  a.query_frames = queries.shape[1];
  a.n_templates = n_templates;
  a.template_frames = templates.shape[1];
  a.channels = queries.shape[2];
  if (template_groups.is_none() != hint_groups.is_none())
    throw py::value_error("template_groups and hint_groups go together (give both or neither)");
  if (!template_groups.is_none()) {
    a.template_groups = checked<const int64_t>(template_groups, "template_groups", DType::Int64, {n_templates}, queries);
    a.hint_groups = checked<const int64_t>(hint_groups, "hint_groups", DType::Int64, {n_queries}, queries);
  }
  a.best_index = checked<int64_t>(best_index, "best_index", DType::Int64, {n_queries}, queries);
  a.best_distance = checked<float>(best_distance, "best_distance", DType::Float32, {n_queries}, queries);
  py::gil_scoped_release release;
  dtw_nearest_cpu(a);
}

// The schedule and special ids shared by interleave_advance and interleave_allowed_mask,
// checked, in an InterleaveArgs whose per-row pointers are still unset.
InterleaveArgs interleave_config(int32_t schedule, const TensorArg& modality, int64_t eos, int64_t begin_audio,
                                 int64_t end_audio, int64_t end_text) {
  const int64_t vocab = modality.shape[0];
  for (int64_t special : {eos, begin_audio, end_audio, end_text})
    if (special < -1 || special >= vocab)
      throw py::value_error("special id " + std::to_string(special) + " is outside [-1, " +
                            std::to_string(vocab) + ")");
  if (schedule < kScheduleSequential || schedule > kScheduleRatio)
    throw py::value_error("schedule must be 0 (sequential), 1 (chunked), 2 (free) or 3 (ratio)");
  InterleaveArgs a;
  a.schedule = schedule;
  a.id_modality = static_cast<const int8_t*>(modality.data);
  a.vocab = vocab;
  a.eos = eos;
  a.begin_audio = begin_audio;
  a.end_audio = end_audio;
  a.end_text = end_text;
  return a;
}

void interleave_advance(int32_t schedule, int32_t text_chunk, int32_t speech_chunk,
                        py::handle ratio_pattern, py::handle id_modality, int64_t eos, int64_t begin_audio,
                        int64_t end_audio, int64_t end_text, py::handle sampled,
                        py::handle max_text, py::handle max_speech, py::handle max_total,
                        py::handle phase, py::handle chunk_count, py::handle chunk_index,
                        py::handle text_count,
                        py::handle speech_count, py::handle text_done, py::handle finish_reason,
                        py::handle out_allowed_set, py::handle out_status, uintptr_t cuda_stream) {
  const TensorArg modality = tensor_arg(id_modality, "id_modality");
  require_dtype(modality, {DType::Int8});
  require_shape(modality, {-1}, "[V]");
  const TensorArg phase_arg = tensor_arg(phase, "phase");
  require_dtype(phase_arg, {DType::Int8});
  require_shape(phase_arg, {-1}, "[N]");
  require_same_device(phase_arg, modality);
  const int64_t n = phase_arg.shape[0];
  InterleaveArgs a = interleave_config(schedule, modality, eos, begin_audio, end_audio, end_text);
  a.n_rows = n;
  a.text_chunk = text_chunk;
  a.speech_chunk = speech_chunk;
  if (schedule == kScheduleChunked && (text_chunk <= 0 || speech_chunk <= 0))
    throw py::value_error("a chunked schedule needs text_chunk > 0 and speech_chunk > 0");
  if (schedule == kScheduleRatio) {
    if (ratio_pattern.is_none()) throw py::value_error("a ratio schedule needs its ratio_pattern");
    const TensorArg pattern = tensor_arg(ratio_pattern, "ratio_pattern");
    require_dtype(pattern, {DType::Int32});
    require_shape(pattern, {-1}, "[2 * pairs]");
    require_same_device(pattern, modality);
    if (pattern.shape[0] < 2 || pattern.shape[0] % 2 != 0 || pattern.shape[0] > (int64_t{1} << 30))
      throw py::value_error("ratio_pattern must hold (text, units) pairs: an even length >= 2");
    if (!pattern.is_cuda()) {  // CUDA callers pass a pattern checked on the host (ModalitySpec)
      const int32_t* values = static_cast<const int32_t*>(pattern.data);
      for (int64_t i = 0; i < pattern.shape[0]; ++i)
        if (values[i] < 1)
          throw py::value_error("ratio_pattern counts must be >= 1, got " + std::to_string(values[i]) +
                                " at position " + std::to_string(i));
    }
    a.ratio_pattern = static_cast<const int32_t*>(pattern.data);
    a.ratio_pairs = static_cast<int32_t>(pattern.shape[0] / 2);
  }
  if (!sampled.is_none()) a.sampled = checked<const int64_t>(sampled, "sampled", DType::Int64, {n}, modality);
  a.max_text = checked<const int32_t>(max_text, "max_text", DType::Int32, {n}, modality);
  a.max_speech = checked<const int32_t>(max_speech, "max_speech", DType::Int32, {n}, modality);
  a.max_total = checked<const int32_t>(max_total, "max_total", DType::Int32, {n}, modality);
  a.phase = static_cast<int8_t*>(phase_arg.data);
  a.chunk_count = checked<int32_t>(chunk_count, "chunk_count", DType::Int32, {n}, modality);
  a.chunk_index = checked<int32_t>(chunk_index, "chunk_index", DType::Int32, {n}, modality);
  a.text_count = checked<int32_t>(text_count, "text_count", DType::Int32, {n}, modality);
  a.speech_count = checked<int32_t>(speech_count, "speech_count", DType::Int32, {n}, modality);
  a.text_done = checked<int8_t>(text_done, "text_done", DType::Int8, {n}, modality);
  a.finish_reason = checked<int8_t>(finish_reason, "finish_reason", DType::Int8, {n}, modality);
  a.out_allowed_set = checked<int32_t>(out_allowed_set, "out_allowed_set", DType::Int32, {n}, modality);
  a.out_status = checked<int32_t>(out_status, "out_status", DType::Int32, {n}, modality);
  dispatch(modality, "interleave_advance", a, cuda_stream, interleave_advance_cpu,
           WAVALIGN_CUDA_FN(interleave_advance_cuda));
}

// CPU only: called once per spec to build the allowed-id range table, never per step.
void interleave_allowed_mask(int32_t schedule, py::handle id_modality, int64_t eos,
                             int64_t begin_audio, int64_t end_audio, int64_t end_text,
                             int32_t allowed_set, py::handle out_mask) {
  const TensorArg modality = tensor_arg(id_modality, "id_modality");
  require_dtype(modality, {DType::Int8});
  require_shape(modality, {-1}, "[V]");
  if (modality.is_cuda()) throw py::value_error("interleave_allowed_mask runs on CPU tensors only");
  const InterleaveArgs a = interleave_config(schedule, modality, eos, begin_audio, end_audio, end_text);
  if (allowed_set < 0 || allowed_set >= kNumAllowedSets)
    throw py::value_error("allowed_set must lie in [0, " + std::to_string(kNumAllowedSets) +
                          "), got " + std::to_string(allowed_set));
  int8_t* out = checked<int8_t>(out_mask, "out_mask", DType::Int8, {a.vocab}, modality);
  py::gil_scoped_release release;
  interleave_allowed_mask_cpu(a, allowed_set, out);
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
  m.def("group_stats", &group_stats, py::arg("rewards"), py::arg("mode"), py::arg("sample_std"),
        py::arg("eps"), py::arg("valid_count"), py::arg("mean"), py::arg("std"),
        py::arg("variance"), py::arg("max"), py::arg("min"), py::arg("zero_variance"),
        py::arg("all_missing"), py::arg("advantages"), py::arg("cuda_stream"));
  m.def("interleave_advance", &interleave_advance, py::arg("schedule"), py::arg("text_chunk"),
        py::arg("speech_chunk"), py::arg("ratio_pattern"), py::arg("id_modality"), py::arg("eos"), py::arg("begin_audio"),
        py::arg("end_audio"), py::arg("end_text"), py::arg("sampled"), py::arg("max_text"),
        py::arg("max_speech"), py::arg("max_total"), py::arg("phase"), py::arg("chunk_count"),
        py::arg("chunk_index"), py::arg("text_count"), py::arg("speech_count"), py::arg("text_done"),
        py::arg("finish_reason"), py::arg("out_allowed_set"), py::arg("out_status"),
        py::arg("cuda_stream"));
  m.def("interleave_allowed_mask", &interleave_allowed_mask, py::arg("schedule"),
        py::arg("id_modality"), py::arg("eos"), py::arg("begin_audio"), py::arg("end_audio"),
        py::arg("end_text"), py::arg("allowed_set"), py::arg("out_mask"));
  m.def("dtw_nearest", &dtw_nearest, py::arg("queries"), py::arg("query_lengths"), py::arg("templates"),
        py::arg("template_lengths"), py::arg("template_groups"), py::arg("hint_groups"), py::arg("best_index"),
        py::arg("best_distance"));
  m.def("build_info", &build_info);
  m.def("cuda_device_count", &cuda_device_count,
        "Number of usable CUDA devices (0 without CUDA kernels, driver or GPU).");
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
}
