// Host/device contract of the CUDA soft_embed forward: the kernel's argument block, its tiling
// constants and its shared-memory layout (computed identically on the host, to size the launch,
// and on the device). Kernel code: soft_embed_fwd.cuh; launch: soft_embed.cu.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/filters.h"
#include "common/macros.h"
#include "common/params.h"

namespace softkernels::cuda {

// Runtime tag of a floating dtype (the embedding table's dtype is dispatched inside the kernels
// so that the big scan code is instantiated once per logits dtype only).
enum DTypeTag : int { kTagF32 = 0, kTagF64 = 1, kTagBF16 = 2, kTagF16 = 3 };

// Calls f with a null pointer of the element type that tag names (the kernels' dtype dispatch).
template <typename F>
__device__ __forceinline__ void dispatch_tag(int tag, F&& f) {
  switch (tag) {
    case kTagF32: f(static_cast<float*>(nullptr)); break;
    case kTagF64: f(static_cast<double*>(nullptr)); break;
    case kTagBF16: f(static_cast<c10::BFloat16*>(nullptr)); break;
    default: f(static_cast<c10::Half*>(nullptr)); break;
  }
}

// One block scans one fixed slice of a row: kThreads threads x kEPT elements each. The slice size
// depends on nothing but this constant, so a row's partial states, and the fixed order in which
// they are merged, are the same whatever the batch (batch invariance).
constexpr int kThreads = 256;
constexpr int kEPT = 32;
constexpr int kSlice = kThreads * kEPT;  // 8192 logits per block
constexpr int kWarps = kThreads / 32;
// Candidate prefilter of a slice: at most this many survivors are sorted directly; more (heavy
// ties, or pools larger than kThreads) take the exact radix-select path.
constexpr int kCapA = 512;
// Candidates of all slices of a row staged in shared memory for the merge (else read from L2).
constexpr int kStageMax = 2048;
// Dynamic shared memory above this asks for the opt-in limit (48 KB minus room for the kernel's
// few bytes of static shared memory).
constexpr int kSmemDefault = 47 * 1024;

struct FwdArgs {
  const void* logits;
  int64_t logits_stride;
  const void* emb;
  int64_t emb_stride;
  int emb_tag;  // DTypeTag of the embedding table
  int64_t B, V, D;
  int k, pool, S, L, stage_cap;
  RowParamSource rs;
  NoiseParams np;
  const bool* hard;
  const int64_t* hard_ids;
  // outputs
  void* embeds;
  int64_t* ids;
  void* weights;
  void* entropy;
  void* max_prob;
  void* noise;  // nullptr unless Gumbel
  int32_t* status;
  // workspace: per (row, slice) statistics and sorted candidate list (stride `pool`)
  void* ws_stats;
  void* ws_z;
  int32_t* ws_id;
  unsigned int* counters;  // [B], zeroed before the launch when S > 1
};

template <typename T>
struct PartialStats {
  T m, s, a;
  int flag;  // 1: a NaN / +inf logit in the slice
};

SK_HD int sk_align16(int x) { return (x + 15) & ~15; }
SK_HD int sk_next_pow2(int x) {
  int m = 1;
  while (m < x) m <<= 1;
  return m;
}

// Byte offsets into the block's dynamic shared memory. The scan's arrays and the epilogue's share
// one region (a block finishes its scan before it can run a row's epilogue).
struct FwdSmem {
  int hist, misc, red;
  int cz, cid, cap_c;                       // scan candidates
  int stz, stid;                            // epilogue: staged candidates of all slices
  int gz, gid, cap_g;                       // epilogue: the selected pool, unsorted
  int pool, e, key, order, taken;           // epilogue: sorted pool and finish_row scratch
  int oid, ow, on, nz;                      // epilogue: the row's k output slots
  int total;
};

constexpr int kMiscInts = 32;  // [0] last-block flag, [1..3] radix broadcast, [4..7] row values,
                               // [8..15] per-warp sums of block scans, [16] merge threshold id

SK_HD FwdSmem fwd_smem_layout(int P, int k, int tsize, int stage_cap) {
  FwdSmem L;
  int o = 0;
  L.hist = o;
  o += 256 * 4;
  L.misc = o;
  o += kMiscInts * 4;
  L.red = o;
  o += sk_align16(kWarps * 4 * tsize);
  const int u = o;
  // scan
  L.cap_c = sk_next_pow2(P > kCapA ? P : kCapA);
  L.cz = u;
  L.cid = L.cz + sk_align16(L.cap_c * tsize);
  const int scan_end = L.cid + sk_align16(L.cap_c * 4);
  // epilogue
  L.stz = u;
  L.stid = L.stz + sk_align16(stage_cap * tsize);
  L.cap_g = L.cap_c;  // the merge prefilter gathers up to kCapA candidates too
  L.gz = L.stid + sk_align16(stage_cap * 4);
  L.gid = L.gz + sk_align16(L.cap_g * tsize);
  L.pool = L.gid + sk_align16(L.cap_g * 4);
  L.e = L.pool + sk_align16(P * 16);  // sizeof(Candidate<T>) == 16 for float and double
  L.key = L.e + sk_align16(P * tsize);
  L.order = L.key + sk_align16(P * tsize);
  L.taken = L.order + sk_align16(P * 4);
  L.oid = L.taken + sk_align16(P);
  L.ow = L.oid + sk_align16(k * 8);
  L.on = L.ow + sk_align16(k * tsize);
  L.nz = L.on + sk_align16(k * tsize);
  const int epi_end = L.nz + sk_align16(k * 4);
  L.total = scan_end > epi_end ? scan_end : epi_end;
  return L;
}

// Raises a c10::Error for a failed CUDA call (defined in soft_embed.cu, so that the kernel
// translation units need no c10 exception headers).
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* what);

// Launches the fused forward for one logits dtype (explicitly instantiated, one .cu per dtype).
template <typename scalar_t>
void launch_soft_embed_fwd(const FwdArgs& a, int smem_bytes, cudaStream_t stream);

}  // namespace softkernels::cuda
