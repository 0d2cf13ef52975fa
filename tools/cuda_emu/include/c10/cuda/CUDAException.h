// Emulation stand-in for c10/cuda/CUDAException.h (tools/cuda_emu).
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#define C10_CUDA_CHECK(expr) TORCH_CHECK((expr) == cudaSuccess, "skemu: CUDA call failed")
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
