// Operator schemas of the softkernels library: the one place that defines every op's signature.
// CPU implementations register in csrc/cpu/, CUDA ones in csrc/cuda/, fake (meta) kernels and
// autograd in softkernels/ops.py. User-facing argument checking also lives in ops.py: call the
// ops through softkernels.* rather than torch.ops.softkernels.* directly.
#include <Python.h>
#include <torch/library.h>

#include "common/logprob.h"
#include "common/macros.h"
#include "common/route.h"
#include "soft_embed_decl.h"

// The module exists so that `import softkernels._C` loads this library (and with it the static
// TORCH_LIBRARY registrations below). It defines no functions; its attributes are the limits and
// codes of the kernels (csrc/common/), which the Python layer reads from here instead of keeping
// copies: softkernels._C.MAX_K, NOISE_GUMBEL, STATUS_NONFINITE, ...
namespace {

struct IntConstant {
  const char* name;
  long long value;
};

const IntConstant kIntConstants[] = {
    {"MAX_K", softkernels::kMaxK},
    {"MAX_POOL", softkernels::kMaxPool},
    {"MAX_BATCH_DIMS", softkernels::kMaxBatchDims},
    {"NOISE_NONE", softkernels::kNoiseNone},
    {"NOISE_GUMBEL", softkernels::kNoiseGumbel},
    {"NOISE_DIRICHLET", softkernels::kNoiseDirichlet},
    {"NOISE_GAUSSIAN", softkernels::kNoiseGaussian},
    {"TIES_EXACT", softkernels::kTiesExact},
    {"TIES_KEEP_ALL", softkernels::kTiesKeepAll},
    {"NOISE_TOPK_DIRICHLET", softkernels::kNoiseTopKDirichlet},
    {"NOISE_WEIGHT_GAUSSIAN", softkernels::kNoiseWeightGaussian},
    {"NOISE_DIRICHLET_GUMBEL", softkernels::kNoiseDirichletGumbel},
    {"NOISE_GUMBEL_SOFT_GRPO", softkernels::kNoiseGumbelSoftGrpo},
    {"STATUS_NONFINITE", softkernels::kStatusNonFinite},
    {"STATUS_ALL_MASKED", softkernels::kStatusAllMasked},
    {"STATUS_BAD_PARAM", softkernels::kStatusBadParam},
    {"STATUS_BAD_HARD_ID", softkernels::kStatusBadHardId},
    {"LP_NONFINITE", softkernels::kLpNonFinite},
    {"LP_ALL_MASKED", softkernels::kLpAllMasked},
    {"LP_NO_SLOT", softkernels::kLpNoSlot},
    {"LP_BAD_NOISE", softkernels::kLpBadNoise},
    {"LP_BAD_ID", softkernels::kLpBadId},
    {"MODE_HARD", softkernels::kModeHard},
    {"MODE_SOFT", softkernels::kModeSoft},
    {"MODE_FORCED_END", softkernels::kModeForcedEnd},
    {"PHASE_ANSWER", 0},
    {"PHASE_THINKING", 1},
    {"INT32_MAX", INT32_MAX},
};

struct FloatConstant {
  const char* name;
  double value;
};

const FloatConstant kFloatConstants[] = {
    {"MIN_TAU", softkernels::kMinTau},
    {"MIN_ALPHA", softkernels::kMinAlpha},
    {"MAX_NOISE_PARAM", softkernels::kMaxNoiseParam},
};

// softkernels._C.SOFT_EMBED_ROW_PARAMS: one tuple per row parameter of soft_embed
// (csrc/soft_embed_decl.h): (name, kind "real" / "int" / "key", lo, hi, lo_open, hi_open,
// neutral).
#define SK_ROW_PY_Real(v) PyFloat_FromDouble(static_cast<double>(v))
#define SK_ROW_PY_Int(v) PyLong_FromLongLong(static_cast<long long>(v))
#define SK_ROW_PY_Key(v) SK_ROW_PY_Int(v)
#define SK_ROW_PY(X, kind, name, lo, hi, lo_open, hi_open, neutral, warp)                    \
  Py_BuildValue("(ssNNNNN)", #name, SK_ROW_PY_KIND_##kind, SK_ROW_PY_##kind(lo),              \
                SK_ROW_PY_##kind(hi), PyBool_FromLong(lo_open), PyBool_FromLong(hi_open),     \
                SK_ROW_PY_##kind(neutral)),
#define SK_ROW_PY_KIND_Real "real"
#define SK_ROW_PY_KIND_Int "int"
#define SK_ROW_PY_KIND_Key "key"

PyObject* row_params_tuple() {
  PyObject* items[] = {SK_SOFT_EMBED_ROW_PARAMS(SK_ROW_PY, _)};
  const Py_ssize_t n = static_cast<Py_ssize_t>(sizeof(items) / sizeof(items[0]));
  PyObject* t = PyTuple_New(n);
  if (t == nullptr) return nullptr;
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (items[i] == nullptr) {
      Py_DECREF(t);
      return nullptr;
    }
    PyTuple_SET_ITEM(t, i, items[i]);
  }
  return t;
}

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module_def);
  if (m == nullptr) return nullptr;
  for (const IntConstant& c : kIntConstants) {
    if (PyModule_AddObject(m, c.name, PyLong_FromLongLong(c.value)) < 0) return nullptr;
  }
  if (PyModule_AddStringConstant(m, "SOFT_EMBED_PARAMS", SK_SOFT_EMBED_NAMES) < 0 ||
      PyModule_AddStringConstant(m, "SOFT_EMBED_BACKWARD_PARAMS", SK_SOFT_EMBED_BACKWARD_NAMES) < 0) {
    return nullptr;
  }
  if (PyModule_AddObject(m, "SOFT_EMBED_ROW_PARAMS", row_params_tuple()) < 0) return nullptr;
  for (const FloatConstant& c : kFloatConstants) {
    if (PyModule_AddObject(m, c.name, PyFloat_FromDouble(c.value)) < 0) return nullptr;
  }
  return m;
}
}

TORCH_LIBRARY(softkernels, m) {
  // Fused softmax -> filters -> noise -> mixture. See docs/semantics.md. Per-row parameters come
  // either as the scalar or as the optional [B] tensor (float64 / int64) that overrides it.
  m.def(SK_SOFT_EMBED_SCHEMA("soft_embed"));
  // Gradients of soft_embed's embeds / weights / noise outputs with respect to logits and
  // embedding (the selection is held fixed; Gumbel's g is held fixed).
  m.def(SK_SOFT_EMBED_BACKWARD_SCHEMA("soft_embed_backward"));
  // The embedding mixture of soft_embed on given slots: embeds[n] = sum_j weights[n, j] *
  // embedding[ids[n, j]] (+ sigma * N(0, I) keyed by the row's seed and offset when gaussian),
  // with the same fp32 accumulation as soft_embed (slot order, zero weights skipped), so that the
  // ids and weights soft_embed returned give back its embeds bit for bit. ids int64 [N, k],
  // weights float32 / float64 [N, k]; seed / offset per row from the optional [N] int64 tensors,
  // else the scalars. A row with a weighted id outside [0, V_e) comes back as NaN.
  m.def(
      "mix_embeddings(Tensor embedding, Tensor ids, Tensor weights, int seed, int offset, "
      "Tensor? seed_rows, Tensor? offset_rows, bool gaussian, float sigma) -> Tensor");
  // One decoding step of the per-row thinking state machine (csrc/common/route.h): Cold Stop,
  // ThinkRouter confidence routing and the thinking budget, for all rows at once, no host sync.
  // phase int8 [B] (1 thinking, 0 answering), low_count / think_steps int32 [B]; returns the
  // step's mode int8 [B] (0 hard, 1 soft, 2 forced think-end), the token to emit int64 [B] and the
  // new state.
  m.def(
      "route_step(Tensor entropy, Tensor max_prob, Tensor next_ids, Tensor phase, "
      "Tensor low_count, Tensor think_steps, int think_end_id, float cold_stop_entropy, "
      "int cold_stop_patience, float router_threshold, int max_think_tokens) -> "
      "(Tensor mode, Tensor token, Tensor phase_out, Tensor low_count_out, "
      "Tensor think_steps_out)");

  // Selective iteration (Think-at-Hard, docs/iterate_hard.md; rules in csrc/common/select_rows.h).
  // The rows whose score is below threshold, compacted without a host sync: idx int64 [B] is a
  // stable partition of 0..B-1 (hard rows ascending, then easy rows ascending), count int64 [1]
  // the number of hard rows (on the scores' device).
  m.def("select_rows(Tensor scores, float threshold) -> (Tensor idx, Tensor count)");
  // In place: logits[idx[j]] += src[j] for j < clamp(count, 0, min(len(idx), len(src))), in j
  // order; count is read on the device (no host sync). logits [B, V], src [N, V], one dtype.
  m.def("add_rows_(Tensor(a!) logits, Tensor src, Tensor idx, Tensor count) -> ()");

  // RL log-probabilities (docs/training.md). Inputs carry any leading batch shape [...];
  // outputs are [...] in fp32 (fp64 for fp64 inputs).
  // SofT-GRPO's log-probability of a Gumbel soft token from logits [..., V] at the saved slot ids
  // and perturbed log-weights g_prime [..., k] (-inf marks an excluded slot); hard rows use
  // log softmax(logits / T)[ids[..., 0]]. Also returns the row's log-sum-exp (saved for the
  // backward) and a per-row status (csrc/common/logprob.h LogprobStatus).
  m.def(
      "gumbel_logprob(Tensor logits, Tensor ids, Tensor g_prime, Tensor? hard, "
      "float temperature, float scale, float clamp_lo, float clamp_hi, float min_weight) -> "
      "(Tensor logprob, Tensor lse, Tensor status)");
  // Gradient of gumbel_logprob w.r.t. logits (dense, contiguous, logits' dtype) and, if asked,
  // g_prime (else an empty tensor).
  m.def(
      "gumbel_logprob_backward(Tensor grad, Tensor logits, Tensor ids, Tensor g_prime, "
      "Tensor? hard, Tensor lse, float temperature, float scale, float clamp_lo, "
      "float clamp_hi, float min_weight, bool g_prime_grad) -> "
      "(Tensor grad_logits, Tensor grad_g_prime)");
  // SofT-GRPO's log-probability of a TopKDirichlet (kind = NOISE_TOPK_DIRICHLET) or
  // WeightGaussian (NOISE_WEIGHT_GAUSSIAN) soft token from logits [..., V] at the slot ids and
  // the rollout's draws [..., k]; hard rows as gumbel_logprob's. alpha / clamp_lo / clamp_hi
  // are TopKDirichlet's, sigma / radius WeightGaussian's. Also returns the row's log-sum-exp
  // (over the k slot logits, or the whole row for hard rows) and a per-row status.
  m.def(
      "slot_logprob(Tensor logits, Tensor ids, Tensor draws, Tensor? hard, int kind, "
      "float temperature, float alpha, float clamp_lo, float clamp_hi, float sigma, "
      "float radius, float min_weight) -> (Tensor logprob, Tensor lse, Tensor status)");
  // Gradient of slot_logprob w.r.t. logits (dense, contiguous, logits' dtype).
  m.def(
      "slot_logprob_backward(Tensor grad, Tensor logits, Tensor ids, Tensor draws, "
      "Tensor? hard, Tensor lse, int kind, float temperature, float alpha, float clamp_lo, "
      "float clamp_hi, float sigma, float radius, float min_weight) -> Tensor");
  // log N(x; mean, sigma^2 I) over the last dim of x, mean [..., D] (one shape and dtype);
  // sigma per row from sigma_rows [...] when given, else the scalar. Also returns
  // ||x - mean||^2 (saved for the backward).
  m.def(
      "gaussian_logprob(Tensor x, Tensor mean, Tensor? sigma_rows, float sigma) -> "
      "(Tensor logprob, Tensor sqdist)");
  // Gradients w.r.t. x and mean (dense, contiguous, x's dtype; empty when not asked).
  m.def(
      "gaussian_logprob_backward(Tensor grad, Tensor x, Tensor mean, Tensor? sigma_rows, "
      "float sigma, bool x_grad, bool mean_grad) -> (Tensor grad_x, Tensor grad_mean)");
}
