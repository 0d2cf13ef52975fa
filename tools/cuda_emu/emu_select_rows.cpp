// csrc/cuda/select_rows.cu compiled for the CPU emulation (the launcher and its kernels, unchanged).
#include "cuda/select_rows.cu"
