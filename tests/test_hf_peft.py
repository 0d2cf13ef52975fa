"""Soft thinking on PEFT models (the real peft package, tiny random models).

patch(peft_model) patches the base transformers model (PeftModel.generate ends in its generate),
so every call form of PeftModel.generate works as unpatched, the patch survives
merge_and_unload(), modules_to_save=["embed_tokens"] is fed from the active trained copy, a LoRA
on embed_tokens is refused with the reason, and IterateHard(adapter=...) switches a PeftModel's
adapter (checked against the naive reference).
"""

import copy
import dataclasses

import pytest
import torch

import softkernels as sk
from softkernels.hf.reference import generate_reference
from _hf_models import make_model, prompts
from test_hf_iterate import NEW as ITER_NEW, _config, _pick_threshold

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

NEW = 8
SOFT = sk.SoftThinkingConfig(k=8, temperature=2.0, top_k=0, top_p=1.0, min_p=0.0,
                             max_think_tokens=5)


def _lora(model, **kw):
    # init_lora_weights=False: random A and B, so the adapter changes the outputs (PEFT's default
    # B = 0 would make it a no-op and the tests unable to tell adapter on from off).
    torch.manual_seed(3)
    kw.setdefault("target_modules", ["q_proj", "v_proj"])
    cfg = peft.LoraConfig(r=4, lora_alpha=16, init_lora_weights=False, task_type="CAUSAL_LM",
                          **kw)
    return peft.get_peft_model(model, cfg)


def test_every_call_form_of_peft_generate_works_patched():
    ids, mask = prompts(batch=2)
    pm = _lora(make_model("llama"))
    assert isinstance(pm, peft.PeftModelForCausalLM)
    gc = copy.deepcopy(pm.generation_config)
    gc.max_new_tokens, gc.do_sample = NEW, False
    calls = {
        "positional": lambda: pm.generate(ids, attention_mask=mask, max_new_tokens=NEW,
                                          do_sample=False),
        "keywords": lambda: pm.generate(input_ids=ids, attention_mask=mask,
                                        max_new_tokens=NEW, do_sample=False),
        "logits_processor": lambda: pm.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
            logits_processor=transformers.LogitsProcessorList()),
        "generation_config": lambda: pm.generate(input_ids=ids, attention_mask=mask,
                                                 generation_config=gc),
    }
    plain = {name: call() for name, call in calls.items()}
    assert all(torch.equal(v, plain["keywords"]) for v in plain.values())
    sk.patch(pm, sk.SoftThinkingConfig(k=1))
    assert sk.hf.is_patched(pm) and sk.hf.is_patched(pm.get_base_model())
    for name, call in calls.items():
        assert torch.equal(call(), plain[name]), name
    out = pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW,
                      return_dict_in_generate=True)
    assert out.soft_trace.num_steps == NEW and (out.soft_trace.mode == 1).all()
    sk.unpatch(pm)
    assert not sk.hf.is_patched(pm.get_base_model())


def test_soft_thinking_runs_with_the_adapter_and_without_it():
    ids, mask = prompts(batch=3)
    base = make_model("llama")
    sk.patch(base, SOFT)
    base_soft = base.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    pm = _lora(make_model("llama"))
    sk.patch(pm, SOFT)
    with_adapter = pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW,
                               do_sample=False)
    with pm.disable_adapter():
        without = pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW,
                              do_sample=False)
    assert torch.equal(without, base_soft)
    assert not torch.equal(with_adapter, base_soft)          # the LoRA layers did run


def test_merge_and_unload_keeps_the_patch():
    ids, mask = prompts(batch=3)
    pm = _lora(make_model("llama"))
    sk.patch(pm, SOFT)
    before = pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    merged = pm.merge_and_unload()
    assert sk.hf.is_patched(merged)
    out = merged.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                          return_dict_in_generate=True)
    assert (out.soft_trace.mode == 1).any()
    # Merged weights round differently from W x + B A x; the tiny models' peaked distributions
    # keep the tokens.
    assert torch.equal(out.sequences, before)


def test_modules_to_save_embedding_feeds_the_trained_copy():
    ids, mask = prompts(batch=3)
    pm = _lora(make_model("llama"), modules_to_save=["embed_tokens"])
    wrapper = pm.get_base_model().get_input_embeddings()
    assert type(wrapper).__name__ == "ModulesToSaveWrapper"
    trained = wrapper.modules_to_save["default"]
    with torch.no_grad():
        trained.weight.add_(torch.randn_like(trained.weight) * trained.weight.std() * 2)
    plain = pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    sk.patch(pm, sk.SoftThinkingConfig(k=1))
    assert torch.equal(pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW,
                                   do_sample=False), plain)
    # Soft rows are mixed from the trained copy: the same as a model whose embedding *is* it.
    sk.patch(pm, SOFT)
    got = pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    ref = copy.deepcopy(pm).merge_and_unload()
    assert isinstance(ref.get_input_embeddings(), torch.nn.Embedding)
    assert torch.equal(ref.get_input_embeddings().weight, trained.weight)
    assert torch.equal(ref.generate(ids, attention_mask=mask, max_new_tokens=NEW,
                                    do_sample=False), got)
    with pm.disable_adapter():           # adapters off: the original embedding again
        off = pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW,
                          do_sample=False)
    assert not torch.equal(off, got)


def test_lora_on_the_input_embedding_is_refused_with_the_reason():
    pm = _lora(make_model("llama"), target_modules=["embed_tokens", "q_proj"])
    with pytest.raises(TypeError, match=r"LoRA on embed_tokens.*merge_and_unload"):
        sk.patch(pm, SOFT)
    merged = pm.merge_and_unload()
    sk.patch(merged, SOFT)                       # merged: a plain nn.Embedding again
    assert sk.hf.is_patched(merged)


def test_iterate_hard_adapter_with_a_peft_model_matches_the_reference():
    ids, mask = prompts(batch=4)
    pm = _lora(make_model("llama"), target_modules=["q_proj", "v_proj", "down_proj"])
    base = pm.get_base_model()
    cfg, ref = _pick_threshold(
        base, ids, mask, lambda t: _config(True, sk.IterateHard(threshold=t, adapter="default")))
    sk.patch(pm, cfg)
    out = pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=ITER_NEW,
                      do_sample=False, return_dict_in_generate=True)
    assert torch.equal(out.sequences, ref.sequences)
    assert torch.equal(out.soft_trace.iterations, ref.iterations)
    layers = [m for m in base.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert layers and not any(m.disable_adapters for m in layers)   # state put back
    # The adapter matters: the same iterations without it give other tokens or iterations.
    no_adapter = dataclasses.replace(cfg, iterate_hard=dataclasses.replace(cfg.iterate_hard,
                                                                           adapter=None))
    other = pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=ITER_NEW,
                        do_sample=False, return_dict_in_generate=True, soft_thinking=no_adapter)
    assert not (torch.equal(other.sequences, out.sequences)
                and torch.equal(other.soft_trace.iterations, out.soft_trace.iterations))


def test_iterate_hard_adapter_errors_with_a_peft_model():
    ids, mask = prompts(batch=2)
    pm = _lora(make_model("llama"))
    sk.patch(pm, sk.SoftThinkingConfig(iterate_hard=sk.IterateHard(threshold=0.5, adapter="nope")))
    with pytest.raises(ValueError, match=r"IterateHard.adapter = 'nope' is not an adapter of this "
                                         r"PEFT model \(adapters: \['default'\]\)"):
        pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3)
    pm.add_adapter("second", peft.LoraConfig(r=2, target_modules=["q_proj"],
                                             task_type="CAUSAL_LM"))
    sk.patch(pm, sk.SoftThinkingConfig(iterate_hard=sk.IterateHard(threshold=0.5, adapter="second")))
    with pytest.raises(ValueError, match=r"not the active adapter .*set_adapter\('second'\)"):
        pm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3)
