"""Build and use the CPU emulation of the CUDA kernels (tools/cuda_emu/README.md).

    from skemu import load, emulated
    load()                      # compiles the emulation once (g++, a few minutes on 2 cores)
    with emulated(seed=3):      # softkernels' raw ops on CPU tensors now run the CUDA code
        out = sk.soft_embed(logits, emb, k=10)

The soft_embed forward runs through its harness (emu_soft_embed.cpp: poisoned outputs and
workspace); every other op through its CUDA launcher itself (csrc/cuda/<op>.cu compiled with g++,
registered as the op's CUDA kernel and called on CPU tensors by redispatching to that key).
"""
import contextlib
import os
import pathlib
import warnings

import torch
import torch.utils.cpp_extension as cpp

import softkernels  # noqa: F401  (the op schemas the emulated CUDA kernels register against)

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# The launchers compiled from csrc/cuda (tools/cuda_emu/emu_<name>.cpp includes <name>.cu), and
# the raw ops each registers.
LAUNCHERS = {
    "soft_embed_backward": ["soft_embed_backward"],
    "logprob": ["gumbel_logprob", "gumbel_logprob_backward", "slot_logprob",
                "slot_logprob_backward", "gaussian_logprob", "gaussian_logprob_backward"],
    "route": ["route_step"],
    "mix": ["mix_embeddings"],
    "select_rows": ["select_rows", "add_rows_"],
}
EMULATED_OPS = ["soft_embed"] + [op for ops in LAUNCHERS.values() for op in ops]
_loaded = False


def load(verbose=False):
    global _loaded
    if _loaded:
        return
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    flags = ["-O2", "-std=c++20", "-DSK_EMU", "-include", str(HERE / "emu.h"),
             "-ffp-contract=off", "-Wno-attributes", "-Wno-unknown-pragmas",
             "-fno-strict-aliasing", "-g0"]
    sources = [HERE / "emu_soft_embed.cpp", HERE / "emu_runtime.cpp"]
    sources += [HERE / f"emu_{name}.cpp" for name in LAUNCHERS]
    cpp.load(name="skemu", sources=[str(s) for s in sources], extra_cflags=flags,
             # include/ first: its c10/cuda headers stand in for the real ones (no CUDA runtime)
             extra_include_paths=[str(HERE / "include"), str(ROOT / "csrc"),
                                  os.path.join(cuda_home, "include")],
             is_python_module=False, verbose=verbose, build_directory=str(_build_dir()))
    _loaded = True


def _build_dir():
    d = ROOT / "build" / "skemu"
    d.mkdir(parents=True, exist_ok=True)
    return d


_CUDA = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)


def _emulated_kernel(op):
    if op == "soft_embed":
        return torch.ops.skemu.soft_embed
    overload = getattr(torch.ops.softkernels, op).default

    def kernel(*args, **kwargs):
        return overload.redispatch(_CUDA, *args, **kwargs)
    return kernel


@contextlib.contextmanager
def emulated(seed=1, random_threads=True, random_blocks=True, ops=None):
    """Within the block, softkernels' raw ops (all of EMULATED_OPS, or those named in ``ops``) on
    CPU tensors run the CUDA device code under the emulator: their CPU kernels are overridden
    (autograd and the Python wrappers above them are unchanged) and restored on exit. ``seed``
    picks the thread and block schedules (random unless turned off)."""
    load()
    torch.ops.skemu.configure(seed, random_threads, random_blocks)
    lib = torch.library.Library("softkernels", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Oo]verrid")
            for op in (EMULATED_OPS if ops is None else ops):
                lib.impl(op, _emulated_kernel(op), "CPU")
        yield
    finally:
        lib._destroy()
