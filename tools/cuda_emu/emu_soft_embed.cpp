// The CUDA soft_embed forward kernel (csrc/cuda/soft_embed_fwd.cuh) run on the CPU under the
// fiber emulator (emu.h): same plan, workspace and argument block as csrc/cuda/soft_embed.cu, CPU
// tensors. Registered as skemu::soft_embed with the schema of softkernels::soft_embed, plus
// skemu::configure(seed, random_threads, random_blocks).
#include <torch/library.h>

#include <limits>

#include "cuda/soft_embed_fwd.cuh"
#include "cuda/soft_embed_fwd_host.h"
#include "soft_embed_host.h"

namespace softkernels::emu_harness {
using namespace softkernels::cuda;

// Applies to every emulated launch from now on (the forward here and the launchers compiled from
// csrc/cuda/*.cu beside it).
void configure(int64_t seed, bool random_threads, bool random_blocks) {
  ::emu::Runtime& r = ::emu::rt();
  r.rng.seed(static_cast<uint64_t>(seed));
  r.random_order = random_threads;
  r.random_blocks = random_blocks;
}

template <typename scalar_t>
void emulate(const FwdArgs& a, int smem) {
  const unsigned blocks = static_cast<unsigned>(a.B * a.S);
  SK_LAUNCH(blocks, kThreads, smem, nullptr, soft_embed_fwd_kernel<scalar_t>)(a);
}

SoftEmbedOutputs soft_embed_emu(SK_SOFT_EMBED_CPP_PARAMS) {
  const SoftEmbedCall c = prepare_soft_embed(SK_SOFT_EMBED_CPP_ARGS);
  const SoftEmbedShape& sh = c.sh;
  const int ltag = dtype_tag(logits.scalar_type(), "logits");
  const int etag = dtype_tag(embedding.scalar_type(), "embedding");
  SoftEmbedOutputs outs = allocate_outputs(logits, embedding, k, noise_kind);
  // Outputs the kernel must write: poison them so that an unwritten value shows.
  std::get<0>(outs).fill_(std::numeric_limits<double>::quiet_NaN());
  std::get<1>(outs).fill_(-7);
  std::get<2>(outs).fill_(std::numeric_limits<double>::quiet_NaN());
  std::get<3>(outs).fill_(std::numeric_limits<double>::quiet_NaN());
  std::get<4>(outs).fill_(std::numeric_limits<double>::quiet_NaN());
  std::get<5>(outs).fill_(std::numeric_limits<double>::quiet_NaN());
  std::get<6>(outs).fill_(-7);
  if (sh.B == 0) return outs;
  const FwdPlan plan = plan_fwd(sh, ltag == kTagF64);
  TORCH_CHECK(plan.smem + 1024 <= 227 * 1024, "skemu: shared memory beyond an H100's");
  at::Tensor ws = at::empty({plan.ws_bytes}, logits.options().dtype(at::kByte));
  ws.fill_(0xFF);  // uninitialised workspace
  auto* base = static_cast<unsigned char*>(ws.data_ptr());
  if (plan.S > 1) std::memset(base, 0, static_cast<size_t>(sh.B) * 4);
  const FwdArgs a = make_fwd_args(logits, embedding, c, etag, outs, plan, base);
  switch (ltag) {
    case kTagF32: emulate<float>(a, plan.smem); break;
    case kTagF64: emulate<double>(a, plan.smem); break;
    case kTagBF16: emulate<c10::BFloat16>(a, plan.smem); break;
    default: emulate<c10::Half>(a, plan.smem); break;
  }
  return outs;
}

// Path counters (per thread that passed the SK_EMU_COUNT), as "name=count" lines; reset after.
std::string counters() {
  std::string out;
  for (const auto& [n, v] : ::emu::counters()) out += n + "=" + std::to_string(v) + "\n";
  ::emu::counters().clear();
  return out;
}

}  // namespace softkernels::emu_harness

TORCH_LIBRARY(skemu, m) {
  m.def(SK_SOFT_EMBED_SCHEMA("soft_embed"));
  m.def("configure(int seed, bool random_threads, bool random_blocks) -> ()");
  m.def("counters() -> str");
}

TORCH_LIBRARY_IMPL(skemu, CPU, m) {
  m.impl("soft_embed", &softkernels::emu_harness::soft_embed_emu);
}
TORCH_LIBRARY_IMPL(skemu, CatchAll, m) {
  m.impl("configure", &softkernels::emu_harness::configure);
  m.impl("counters", &softkernels::emu_harness::counters);
}
