"""The README's vLLM snippet runs as written (in its own process: it owns an engine)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _vllm_blocks():
    text = open(os.path.join(ROOT, "README.md")).read()
    return [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "import vllm" in b]


def test_readme_vllm_snippets_run():
    blocks = _vllm_blocks()
    assert blocks, "README has no vLLM snippet"
    for code in blocks:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=600, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "tensor([[" in r.stdout          # the trace's mode row was printed
