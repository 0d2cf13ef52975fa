// The few CUDA runtime calls the launchers make, for the CPU emulation (no libcudart is linked):
// memory is host memory, there is one "device" with an H100's opt-in shared-memory limit, and a
// launch (emu.h's launcher) has finished when it returns, so no error is ever pending.
#include <cuda_runtime_api.h>

#include <c10/util/Exception.h>

#include <cstring>

extern "C" {
cudaError_t CUDARTAPI cudaGetLastError(void) { return cudaSuccess; }
const char* CUDARTAPI cudaGetErrorName(cudaError_t) { return "cudaErrorEmulated"; }
const char* CUDARTAPI cudaGetErrorString(cudaError_t) { return "error in the CUDA emulation"; }
cudaError_t CUDARTAPI cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? 227 * 1024 : 0;
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaFuncSetAttribute(const void*, enum cudaFuncAttribute, int) {
  return cudaSuccess;
}
cudaError_t CUDARTAPI cudaMemsetAsync(void* p, int value, size_t count, cudaStream_t) {
  std::memset(p, value, count);
  return cudaSuccess;
}
}

namespace softkernels::cuda {
void throw_cuda_error(cudaError_t err, const char* what) {
  TORCH_CHECK(false, "softkernels: ", what, " failed: ", cudaGetErrorName(err));
}
}  // namespace softkernels::cuda
