// csrc/cuda/route.cu compiled for the CPU emulation (the launcher and its kernels, unchanged).
#include "cuda/route.cu"
