// csrc/cuda/mix.cu compiled for the CPU emulation (the launcher and its kernels, unchanged).
#include "cuda/mix.cu"
