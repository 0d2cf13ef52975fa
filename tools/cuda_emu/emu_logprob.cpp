// csrc/cuda/logprob.cu compiled for the CPU emulation (the launcher and its kernels, unchanged).
#include "cuda/logprob.cu"
