"""tests/vllm: the vLLM plug-in on a real vLLM (the CPU build), in its own venv (`make test-vllm`).

Collected only where vLLM is installed (tests/conftest.py ignores this folder elsewhere). Engines
run in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0) with a 1 GiB KV cache, fp32 and eager mode,
which start in ~20 s on a 2-core machine; one test starts a multi-process engine that loads the
plug-in from its entry point, one an AsyncLLM (its own engine-core process).
"""

import os

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

vllm = pytest.importorskip("vllm")

from _vllm_engines import engine  # noqa: E402


@pytest.fixture(scope="session")
def smollm_path():
    """The project's cached HF copy of SmolLM2-135M-Instruct (converted once from the GGUF)."""
    from softkernels.hf.smollm import cache_dir, load_smollm2
    load_smollm2()
    return str(cache_dir())


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
