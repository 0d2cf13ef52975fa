// Kernel launches, dynamic shared memory and the device check of the CUDA launchers, written so
// that the CPU emulation (tools/cuda_emu, SK_EMU) compiles the same launchers with g++: there a
// launch runs the grid's blocks one after another on fibers, and the tensors are CPU tensors.
//   SK_LAUNCH(grid, block, smem, stream, kernel)(args...)   kernel<<<grid, block, smem, stream>>>
//   SK_DYN_SMEM(name);                                     extern __shared__ unsigned char name[]
//   SK_ON_DEVICE(t)                                        t.is_cuda()
#pragma once

#ifdef SK_EMU
#define SK_LAUNCH(grid, block, smem, stream, ...) \
  ::emu::launcher((grid), (block), (smem), [](auto&&... sk_args) { __VA_ARGS__(sk_args...); })
#define SK_DYN_SMEM(name) unsigned char* name = ::emu::dynamic_smem()
#define SK_ON_DEVICE(t) (t).is_cpu()
#else
#define SK_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#define SK_DYN_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define SK_ON_DEVICE(t) (t).is_cuda()
#endif
