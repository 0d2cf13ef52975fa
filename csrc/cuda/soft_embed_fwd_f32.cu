// Forward kernel of soft_embed for float logits (one dtype per file: parallel compilation).
#include "cuda/soft_embed_fwd.cuh"

namespace softkernels::cuda {
template void launch_soft_embed_fwd<float>(const FwdArgs&, int, cudaStream_t);
}  // namespace softkernels::cuda
