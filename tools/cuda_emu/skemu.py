"""Build and use the CPU emulation of the CUDA soft_embed forward (tools/cuda_emu/README.md).

    from skemu import load, emulated
    load()                      # compiles emu_soft_embed.cpp once (g++, ~1 min on 2 cores)
    with emulated(seed=3):      # sk.soft_embed on CPU tensors now runs the CUDA kernel's code
        out = sk.soft_embed(logits, emb, k=10)
"""
import contextlib
import os
import pathlib

import torch
import torch.utils.cpp_extension as cpp

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
_loaded = False


def load(verbose=False):
    global _loaded
    if _loaded:
        return
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    flags = ["-O2", "-std=c++20", "-DSK_EMU", "-include", str(HERE / "emu.h"),
             "-ffp-contract=off", "-Wno-attributes", "-Wno-unknown-pragmas",
             "-fno-strict-aliasing", "-g0"]
    cpp.load(name="skemu", sources=[str(HERE / "emu_soft_embed.cpp")],
             extra_cflags=flags,
             extra_include_paths=[str(ROOT / "csrc"), os.path.join(cuda_home, "include")],
             is_python_module=False, verbose=verbose,
             build_directory=str(_build_dir()))
    _loaded = True


def _build_dir():
    d = ROOT / "build" / "skemu"
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def emulated(seed=1, random_threads=True, random_blocks=True):
    """Within the block, softkernels' raw soft_embed op on CPU tensors runs the CUDA kernel's
    device code under the emulator."""
    load()
    torch.ops.skemu.configure(seed, random_threads, random_blocks)
    ns = torch.ops.softkernels
    real = ns.soft_embed
    ns.soft_embed = torch.ops.skemu.soft_embed
    try:
        yield
    finally:
        ns.soft_embed = real
