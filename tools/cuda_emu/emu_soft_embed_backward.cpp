// csrc/cuda/soft_embed_backward.cu compiled for the CPU emulation (the launcher and its kernels, unchanged).
#include "cuda/soft_embed_backward.cu"
