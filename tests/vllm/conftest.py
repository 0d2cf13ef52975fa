"""tests/vllm: the vLLM plug-in on a real vLLM (the CPU build), in its own venv (`make test-vllm`).

Skipped as a whole where vLLM is not installed (the project's main venv). Engines run in-process
(VLLM_ENABLE_V1_MULTIPROCESSING=0) with a 1 GiB KV cache, fp32 and eager mode, which start in
~20 s on a 2-core machine; one test starts a multi-process engine that loads the plug-in from its
entry point.
"""

import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

vllm = pytest.importorskip("vllm")

PROMPTS = ["The capital of France is", "def fib(n):", "Once upon a time", "Water boils at",
           "My favourite colour is", "The three laws of robotics"]


@pytest.fixture(scope="session")
def smollm_path():
    """The project's cached HF copy of SmolLM2-135M-Instruct (converted once from the GGUF)."""
    from softkernels.hf.smollm import cache_dir, load_smollm2
    load_smollm2()
    return str(cache_dir())


_ALIVE = []


def engine(path, **kw):
    """A vLLM engine on ``path`` with the plug-in (fp32, eager, 32-token blocks).

    Engines stay alive until the session ends: an in-process engine that is garbage collected
    tears down vLLM's process-wide distributed state, which breaks the other engines.
    """
    import softkernels.vllm as skv
    args = dict(model=path, dtype="float32", enforce_eager=True, block_size=32,
                max_model_len=512, seed=0)
    args.update(kw)
    default = args.pop("default", None)
    e = vllm.LLM(**args, **skv.engine_kwargs(default=default))
    _ALIVE.append(e)
    return e


@pytest.fixture(scope="session")
def llm(smollm_path):
    return engine(smollm_path)


@pytest.fixture(scope="session")
def hf(smollm_path):
    """(model, tokenizer) of the same checkpoint in Hugging Face transformers, fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(smollm_path)
    model = AutoModelForCausalLM.from_pretrained(smollm_path, dtype=torch.float32)
    model.eval()
    return model, tok
