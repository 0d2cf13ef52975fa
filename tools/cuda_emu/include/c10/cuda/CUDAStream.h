// Emulation stand-in for c10/cuda/CUDAStream.h (tools/cuda_emu): launches run at once, in order.
#pragma once

#include <cuda_runtime_api.h>

#include <c10/core/Device.h>

namespace c10::cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return CUDAStream{}; }
}  // namespace c10::cuda
