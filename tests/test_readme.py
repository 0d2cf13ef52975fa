"""Every ```python block of README.md runs as written.

The blocks run in order, in one namespace (as a reader pastes them into one Python session); the
Hugging Face ones load the bundled SmolLM2-135M-Instruct themselves. Blocks that use vLLM run
only where vllm is importable (the vLLM plug-in's own environment).
"""

import re
from pathlib import Path

import pytest
import torch

from softkernels.vllm import installed

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```", re.S | re.M)
_VLLM = re.compile(r"^\s*(import vllm|from vllm\b)|softkernels\.vllm|from softkernels import vllm",
                   re.M)


def blocks(text: str):
    """[(line number of the block's first code line, code)] of every ```python block."""
    return [(text[:m.start(1)].count("\n") + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def needs_vllm(code: str) -> bool:
    return _VLLM.search(code) is not None


def test_block_extraction():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\nimport vllm\n```\n"
    assert blocks(text) == [(3, "x = 1\n"), (9, "import vllm\n")]
    assert [needs_vllm(c) for _, c in blocks(text)] == [False, True]


@pytest.mark.slow
def test_readme_snippets_run_as_written(capsys):
    found = blocks(README.read_text())
    assert len(found) >= 6
    have_vllm = installed()
    ns = {"__name__": "__readme__"}
    ran = 0
    torch.manual_seed(0)
    for line, code in found:
        if needs_vllm(code) and not have_vllm:
            continue
        try:
            exec(compile(code, f"README.md:{line}", "exec"), ns)
        except Exception as e:      # noqa: BLE001 (names the snippet)
            pytest.fail(f"the README.md snippet starting at line {line} fails: "
                        f"{type(e).__name__}: {e}")
        ran += 1
    assert ran >= 6
    # The Hugging Face example did think softly and printed its answer.
    assert (ns["trace"].mode == 1).any()
    assert capsys.readouterr().out.strip()
