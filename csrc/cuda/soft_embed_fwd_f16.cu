// Forward kernel of soft_embed for c10::Half logits (one dtype per file: parallel compilation).
#include "cuda/soft_embed_fwd.cuh"

namespace softkernels::cuda {
template void launch_soft_embed_fwd<c10::Half>(const FwdArgs&, int, cudaStream_t);
}  // namespace softkernels::cuda
