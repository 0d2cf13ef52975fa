// Forward kernel of soft_embed for double logits (one dtype per file: parallel compilation).
#include "cuda/soft_embed_fwd.cuh"

namespace softkernels::cuda {
template void launch_soft_embed_fwd<double>(const FwdArgs&, int, cudaStream_t);
}  // namespace softkernels::cuda
