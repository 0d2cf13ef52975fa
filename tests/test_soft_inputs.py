"""soft_inputs_from_trace: the inputs_embeds a patched generate() fed, rebuilt from the trace, bit for
bit; and the training forward built on them (SofT-GRPO log-probabilities at ratio 1)."""

import pytest
import torch

import softkernels as sk
from _hf_models import EOS, FAMILIES, make_model, prompts
from test_mix_embeddings import assert_bitwise

pytest.importorskip("transformers")

NOISES = {"none": None, "gumbel": sk.Gumbel(), "gaussian": sk.Gaussian(),
          "dirichlet": sk.Dirichlet(),
          # SofT-GRPO's: weights of all k slots, some negative; Gamma draws after top-k
          "weight_gaussian": sk.WeightGaussian(0.2), "topk_dirichlet": sk.TopKDirichlet()}
NEW = 12
TE = 9          # think-end token of the tiny models


# Small forwards: one thread is as fast as two on an idle 2-core machine and several times
# faster on a busy one (no OpenMP barrier waiting for a descheduled thread).
pytestmark = pytest.mark.usefixtures("one_thread")


class Capture:
    """Records what the model's forward was fed during generate(): a forward pre-hook on the model
    (the patched generate calls the model itself, with the soft rows in ``inputs_embeds``; the
    prefill gets ``input_ids``, embedded here by the model's own input embedding). Also usable
    as a (no-op) logits processor, so that tests can pass it in ``logits_processor``."""

    def __init__(self, model):
        self.emb, self.outputs = model.get_input_embeddings(), []
        self.handle = model.register_forward_pre_hook(self._pre, with_kwargs=True)

    def _pre(self, module, args, kwargs):
        x = kwargs.get("inputs_embeds")
        if x is None:
            with torch.no_grad():
                x = self.emb(kwargs["input_ids"])
        self.outputs.append(x.detach().clone())

    def __call__(self, input_ids, scores):
        return scores

    def remove(self):
        self.handle.remove()

    def fed(self, use_cache: bool) -> torch.Tensor:
        """[B, P + T - 1, D]: the input at every position the rollout fed."""
        return torch.cat(self.outputs, 1) if use_cache else self.outputs[-1]


class Drive:
    """Makes rows end thinking at different steps: (row, step) -> token forced at that step;
    (row, step) pairs made flat (a router takes them hard)."""

    def __init__(self, P, force=(), flat=()):
        self.P, self.force, self.flat = P, dict(force), set(flat)

    def __call__(self, input_ids, scores):
        t = input_ids.shape[1] - self.P
        scores = scores.clone()
        for (b, step), tok in self.force.items():
            if step == t:
                scores[b] = -30.0
                scores[b, tok] = 30.0
        for (b, step) in self.flat:
            if step == t:
                scores[b] = 0.0
        return scores


def rollout(model, config, *, use_cache=True, do_sample=False, batch=4, drive=True, **kw):
    ids, mask = prompts(batch=batch)                 # left padding: rows 1.. are padded
    P = ids.shape[1]
    sk.patch(model, config)
    cap = Capture(model)
    # Row 0 ends thinking itself at step 2, row 1 at step 5 and then emits EOS at step 8 (steps
    # after it are padding, invalid); row 2's steps 1 and 3 are flat (router: hard); the budget
    # (max_think_tokens) forces think-end on the rows still thinking (mode 2).
    procs = [Drive(P, force={(0, 2): TE, (1, 5): TE, (1, 8): EOS}, flat={(2, 1), (2, 3)})] \
        if drive and batch >= 3 else []
    try:
        out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=do_sample,
                             use_cache=use_cache, logits_processor=procs + [cap],
                             return_dict_in_generate=True, **kw)
    finally:
        cap.remove()
    return out, mask, cap.fed(use_cache)


def check_bitwise(model, out, fed):
    tr = out.soft_trace
    P, T = tr.prompt_length, tr.num_steps
    x = sk.soft_inputs_from_trace(tr, model.get_input_embeddings(), out.sequences)
    assert x.shape == (tr.batch_size, P + T, fed.shape[-1]) and x.dtype == fed.dtype
    L = fed.shape[1]
    assert L == P + T - 1
    # Compare every fed position except the steps after a row's EOS (padding; see the docstring).
    keep = torch.cat([torch.ones(tr.batch_size, P, dtype=torch.bool), tr.valid[:, :T - 1]], 1)
    assert_bitwise(x[:, :L][keep], fed[keep], "rebuilt inputs vs fed inputs")
    # The generated-only variant and the weight-matrix variant agree with it.
    gen = sk.soft_inputs_from_trace(tr, model, out.sequences, include_prompt=False)
    assert_bitwise(gen, x[:, P:])
    by_matrix = sk.soft_inputs_from_trace(tr, model.get_input_embeddings().weight, out.sequences)
    assert_bitwise(by_matrix, x)
    return x


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("noise", list(NOISES))
def test_bitwise_equal_to_the_rollout_inputs(models, family, noise):
    m = models(family)
    config = sk.SoftThinkingConfig(k=4, noise=NOISES[noise], seed=11, think_end=TE,
                                   max_think_tokens=7, router=sk.ConfidenceRouter(0.05))
    for use_cache in (True, False):
        for do_sample in (False, True):
            torch.manual_seed(3)
            out, _, fed = rollout(m, config, use_cache=use_cache, do_sample=do_sample)
            tr = out.soft_trace
            modes = set(tr.mode[tr.valid].tolist())
            assert modes == {0, 1, 2}, modes              # soft, hard and forced steps all occur
            assert not tr.valid.all()                      # and a row that finished early
            assert len(set(tr.end_step.tolist())) > 1      # rows ended thinking at different steps
            check_bitwise(m, out, fed)


def test_no_think_end_and_num_return_sequences(models):
    """think_end=None (the budget switches rows to hard tokens) and expanded rows."""
    m = models("qwen3")
    config = sk.SoftThinkingConfig(k=5, noise=sk.Gaussian(0.5), seed=2, max_think_tokens=4)
    torch.manual_seed(0)
    out, _, fed = rollout(m, config, do_sample=True, batch=2, drive=False,
                          num_return_sequences=3)
    assert out.sequences.shape[0] == 6
    check_bitwise(m, out, fed)


def test_training_forward_recomputes_the_rollout_logprobs(models):
    """A forward over prompt + generation on the rebuilt inputs reproduces the rollout's logits
    (so the SofT-GRPO ratio is 1 before any update), with left padding and rows that end at
    different steps."""
    m = models("llama")
    noise = sk.Gumbel(tau=0.5)
    config = sk.SoftThinkingConfig(k=4, noise=noise, seed=4, think_end=TE, max_think_tokens=7)
    torch.manual_seed(1)
    out, mask, _ = rollout(m, config, do_sample=True, output_logits=True)
    tr = out.soft_trace
    P, T = tr.prompt_length, tr.num_steps
    old_logits = torch.stack(out.logits, 1)                     # [B, T, V], raw
    x = sk.soft_inputs_from_trace(tr, m, out.sequences)
    full_mask = torch.cat([mask, torch.ones_like(tr.valid, dtype=mask.dtype)], 1)
    pos = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 0)
    new_logits = m(inputs_embeds=x, attention_mask=full_mask, position_ids=pos).logits
    new_logits = new_logits[:, P - 1:P + T - 1]
    valid = tr.valid
    torch.testing.assert_close(new_logits[valid], old_logits[valid], atol=1e-4, rtol=1e-4)
    hard = tr.mode != 1
    gen = out.sequences[:, P:]
    ids = tr.ids.clone()
    ids[..., 0] = torch.where(hard, gen, tr.ids[..., 0])         # hard rows score their token
    kw = dict(tau=noise.tau, temperature=config.temperature, clamp=noise.clamp, hard=hard,
              scale=noise.scale)
    old = sk.gumbel_logprob(old_logits, ids, tr.noise, **kw)
    new = sk.gumbel_logprob(new_logits, ids, tr.noise, **kw)
    ratio = torch.exp(new - old)[valid]
    assert (ratio - 1).abs().max() < 1e-4
    assert (tr.mode[valid] == 1).any() and hard[valid].any()


def test_gradients_reach_the_embedding(models):
    m = models("gemma3")                                        # scaled embedding, tied head
    config = sk.SoftThinkingConfig(k=4, noise=sk.Gaussian(0.3), seed=1, max_think_tokens=6)
    out, _, _ = rollout(m, config, batch=2, drive=False)
    emb = m.get_input_embeddings()
    emb.weight.grad = None
    x = sk.soft_inputs_from_trace(out.soft_trace, emb, out.sequences, include_prompt=False)
    soft = out.soft_trace.mode == 1
    (x[soft].float().square().sum()).backward()
    g = emb.weight.grad
    used = out.soft_trace.ids[soft][out.soft_trace.weights[soft] > 0].unique()
    assert g[used].abs().sum(-1).gt(0).all()
    emb.weight.grad = None


def test_bad_arguments(models):
    m = models("llama")
    out, _, _ = rollout(m, sk.SoftThinkingConfig(k=3), batch=2, drive=False)
    tr, seq = out.soft_trace, out.sequences
    with pytest.raises(TypeError, match="trace must be a softkernels.SoftTrace"):
        sk.soft_inputs_from_trace(seq, m, seq)
    with pytest.raises(TypeError, match="embedding must be the model's input embedding"):
        sk.soft_inputs_from_trace(tr, "model", seq)
    with pytest.raises(ValueError, match=r"sequences has shape \(2, 17\) but the trace describes"):
        sk.soft_inputs_from_trace(tr, m, seq[:, :-1])
    with pytest.raises(ValueError, match="sequences must be output.sequences"):
        sk.soft_inputs_from_trace(tr, m, seq[0])
    with pytest.raises(TypeError, match="include_prompt must be a bool"):
        sk.soft_inputs_from_trace(tr, m, seq, include_prompt=1)
    gemma = models("gemma3")
    with pytest.raises(ValueError, match="recorded with embed_scale None but this embedding "
                                         "module scales its rows by"):
        sk.soft_inputs_from_trace(tr, gemma, seq)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_bfloat16_model(family):
    """A bfloat16 model: soft tokens mixed in fp32 and rounded to bfloat16, Gemma's scale in
    bfloat16, Gaussian noise; still bitwise."""
    m = make_model(family).to(torch.bfloat16)
    config = sk.SoftThinkingConfig(k=4, noise=sk.Gaussian(0.5), seed=3, think_end=TE,
                                   max_think_tokens=7)
    torch.manual_seed(0)
    out, _, fed = rollout(m, config, do_sample=True)
    assert fed.dtype == torch.bfloat16 and (out.soft_trace.mode == 1).any()
    check_bitwise(m, out, fed)
