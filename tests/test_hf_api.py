"""The HF layer's API: config validation, patch / unpatch, and the errors it promises."""

import dataclasses

import pytest
import torch
from torch import nn

import softkernels as sk
from _hf_models import VOCAB, make_model, prompts

transformers = pytest.importorskip("transformers")


# --------------------------------------------------------------------------------------------
# Config dataclasses.

def test_defaults_are_soft_thinking_s():
    c = sk.SoftThinkingConfig()
    assert (c.k, c.temperature, c.top_k, c.top_p, c.min_p) == (10, 0.6, 30, 0.95, 0.001)
    assert c.noise is None and c.think_end is None and c.cold_stop is None
    assert c.router is None and c.max_think_tokens is None and c.seed is None
    assert sk.ColdStop() == sk.ColdStop(entropy_threshold=0.01, patience=256)
    assert sk.ConfidenceRouter(0.5).threshold == 0.5


BAD_FIELDS = [
    ("k", 0, ValueError), ("k", 1025, ValueError), ("k", 2.0, TypeError), ("k", True, TypeError),
    ("temperature", 0.0, ValueError), ("temperature", -1, ValueError),
    ("temperature", float("inf"), ValueError), ("temperature", float("nan"), ValueError),
    ("temperature", "hot", TypeError),
    ("top_k", -1, ValueError), ("top_k", 3.5, TypeError),
    ("top_p", 0.0, ValueError), ("top_p", 1.5, ValueError), ("top_p", None, TypeError),
    ("min_p", 1.0, ValueError), ("min_p", -0.1, ValueError),
    ("noise", "gumbel", TypeError),
    ("think_end", -1, ValueError), ("think_end", "", ValueError), ("think_end", 1.0, TypeError),
    ("cold_stop", 0.01, TypeError), ("router", 0.5, TypeError),
    ("max_think_tokens", -1, ValueError), ("max_think_tokens", 10.0, TypeError),
    ("seed", 2 ** 63, ValueError), ("seed", "1", TypeError),
]


@pytest.mark.parametrize("field,value,exc", BAD_FIELDS)
def test_bad_config_field_names_field_and_value(field, value, exc):
    with pytest.raises(exc) as info:
        sk.SoftThinkingConfig(**{field: value})
    msg = str(info.value)
    assert f"SoftThinkingConfig.{field}" in msg and repr(value)[:10] in msg


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(entropy_threshold=-0.1), ValueError, "ColdStop.entropy_threshold"),
    (dict(entropy_threshold="low"), TypeError, "ColdStop.entropy_threshold"),
    (dict(patience=0), ValueError, "ColdStop.patience"),
    (dict(patience=2.5), TypeError, "ColdStop.patience"),
])
def test_bad_cold_stop(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        sk.ColdStop(**kwargs)


@pytest.mark.parametrize("value,exc", [(0.0, ValueError), (1.5, ValueError), (None, TypeError),
                                       (float("nan"), ValueError)])
def test_bad_router(value, exc):
    with pytest.raises(exc, match="ConfidenceRouter.threshold"):
        sk.ConfidenceRouter(value)


def test_config_is_frozen_and_replaceable():
    c = sk.SoftThinkingConfig(think_end=5, cold_stop=sk.ColdStop(patience=4),
                              router=sk.ConfidenceRouter(0.7), noise=sk.Gumbel(), seed=-3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.k = 3
    assert dataclasses.replace(c, k=3).k == 3
    with pytest.raises(ValueError, match="SoftThinkingConfig.k"):
        dataclasses.replace(c, k=0)


# --------------------------------------------------------------------------------------------
# patch / unpatch.

def _snapshot(m):
    return (dict(m.__dict__), {n: p.detach().clone() for n, p in m.state_dict().items()},
            [(n, dict(mod._forward_hooks), dict(mod._forward_pre_hooks))
             for n, mod in m.named_modules()])


def test_patch_is_idempotent_and_unpatch_restores_exactly():
    m = make_model("llama")
    ids, mask = prompts(batch=2)
    plain = m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    before_dict, before_state, before_hooks = _snapshot(m)
    class_generate = type(m).generate

    assert sk.patch(m) is m
    wrapper = m.generate
    assert sk.hf.is_patched(m)
    sk.patch(m, sk.SoftThinkingConfig(k=1))          # again: config replaced, not re-wrapped
    assert m.generate is wrapper
    assert m._softkernels_patch.config.k == 1
    assert torch.equal(m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False),
                       plain)
    # No hook outlives a call.
    assert all(not mod._forward_hooks for mod in m.modules())

    assert sk.unpatch(m) is m
    assert not sk.hf.is_patched(m)
    after_dict, after_state, after_hooks = _snapshot(m)
    assert after_dict.keys() == before_dict.keys()
    assert all(after_dict[k] is before_dict[k] for k in before_dict)
    assert after_hooks == before_hooks
    assert all(torch.equal(after_state[k], before_state[k]) for k in before_state)
    assert m.generate.__func__ is class_generate
    assert torch.equal(m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False),
                       plain)
    sk.unpatch(m)                                     # unpatching twice is a no-op


def test_patched_model_survives_deepcopy_and_pickling():
    import copy
    import io
    m = make_model("llama")
    ids, mask = prompts(batch=2)
    plain = m.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    sk.patch(m, sk.SoftThinkingConfig(k=1))
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    for clone in (copy.deepcopy(m), torch.load(buf, weights_only=False)):
        assert clone.generate.__self__ is clone
        out = clone.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                             return_dict_in_generate=True)
        assert torch.equal(out.sequences, plain) and out.soft_trace.k == 1
        sk.unpatch(clone)
        assert "generate" not in clone.__dict__ and not sk.hf.is_patched(clone)


def test_unpatch_keeps_an_instance_generate_that_was_there_before():
    m = make_model("gpt2")
    sentinel = m.generate
    m.generate = sentinel                             # an instance attribute set by someone else
    sk.patch(m)
    assert m.generate is not sentinel
    sk.unpatch(m)
    assert m.generate is sentinel


def test_patch_rejects_bad_arguments():
    m = make_model("llama")
    with pytest.raises(TypeError, match="SoftThinkingConfig"):
        sk.patch(m, {"k": 3})
    with pytest.raises(TypeError, match="model must be"):
        sk.patch(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="think_end = 5000"):
        sk.patch(m, sk.SoftThinkingConfig(think_end=5000))


class _NotEmbedding(nn.Module):
    def __init__(self, V, D):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(V, D))

    def forward(self, ids):
        return self.weight[ids]


class _ShiftedEmbedding(nn.Embedding):
    def forward(self, ids):
        return super().forward(ids) + 1.0


def test_patch_rejects_input_embeddings_it_cannot_feed():
    m = make_model("llama")
    m.set_input_embeddings(_NotEmbedding(VOCAB, 64))
    with pytest.raises(TypeError, match="not a torch.nn.Embedding"):
        sk.patch(m)
    m = make_model("llama")
    m.set_input_embeddings(_ShiftedEmbedding(VOCAB, 64))
    with pytest.raises(TypeError, match="other than a table lookup"):
        sk.patch(m)


def test_top_k_beyond_the_kernel_pool_is_refused_for_large_vocabularies():
    m = make_model("qwen2", vocab=1500)
    with pytest.raises(ValueError, match="SoftThinkingConfig.top_k = 1200"):
        sk.patch(m, sk.SoftThinkingConfig(top_k=1200))
    sk.patch(m, sk.SoftThinkingConfig(top_k=1500))   # >= V: off, fine


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<think>": 3, "</think>": 4, "a": 5, "b": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                                bos_token="<s>", eos_token="</s>")


def test_think_end_string_is_resolved_with_the_tokenizer():
    m = make_model("llama")
    tok = _tokenizer()
    sk.patch(m, sk.SoftThinkingConfig(think_end="</think>", max_think_tokens=2), tokenizer=tok)
    assert m._softkernels_patch.think_end_id == 4
    ids, mask = prompts(batch=1)
    out = m.generate(ids, attention_mask=mask, max_new_tokens=4, return_dict_in_generate=True)
    assert out.sequences[0, ids.shape[1] + 2] == 4 and out.soft_trace.think_end_id == 4
    with pytest.raises(ValueError, match="not a single token"):
        sk.patch(m, sk.SoftThinkingConfig(think_end="a b"), tokenizer=tok)
    with pytest.raises(ValueError, match="pass the tokenizer"):
        sk.patch(make_model("llama"), sk.SoftThinkingConfig(think_end="</think>"))
    # Or at generate time, with generate's own tokenizer argument.
    m2 = make_model("llama")
    sk.patch(m2, sk.SoftThinkingConfig(think_end="</think>", max_think_tokens=1), tokenizer=tok)
    out = m2.generate(ids, attention_mask=mask, max_new_tokens=3, return_dict_in_generate=True,
                      soft_thinking=sk.SoftThinkingConfig(think_end="</think>",
                                                          max_think_tokens=1), tokenizer=tok)
    assert out.sequences[0, ids.shape[1] + 1] == 4


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_beams=2), "beam search"),
    (dict(num_beams=2, do_sample=True), "beam search"),
    (dict(prompt_lookup_num_tokens=3), "assisted decoding"),
    (dict(penalty_alpha=0.6, top_k=4), "generation mode 'contrastive_search'"),
    (dict(custom_generate=lambda *a, **k: None), "custom_generate"),
    (dict(guidance_scale=1.5), "guidance"),
])
def test_unsupported_generate_modes_raise(kwargs, match):
    m = make_model("llama")
    sk.patch(m)
    ids, mask = prompts(batch=1)
    with pytest.raises(ValueError, match=match):
        m.generate(ids, attention_mask=mask, max_new_tokens=3, **kwargs)


def test_assistant_model_raises():
    m = make_model("llama")
    sk.patch(m)
    ids, mask = prompts(batch=1)
    with pytest.raises(ValueError, match="assisted decoding"):
        m.generate(ids, attention_mask=mask, max_new_tokens=3, assistant_model=make_model("llama"))


def test_soft_thinking_argument_type_is_checked():
    m = make_model("llama")
    sk.patch(m)
    ids, mask = prompts(batch=1)
    with pytest.raises(TypeError, match="soft_thinking"):
        m.generate(ids, attention_mask=mask, max_new_tokens=3, soft_thinking="yes")


def test_encoder_decoder_models_are_refused():
    cfg = transformers.T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                num_heads=2, decoder_start_token_id=0)
    with pytest.raises(ValueError, match="encoder-decoder"):
        sk.patch(transformers.T5ForConditionalGeneration(cfg))


def test_import_softkernels_does_not_import_transformers():
    import subprocess
    import sys
    code = "import sys, softkernels; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
