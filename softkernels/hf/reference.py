"""Naive reference of Think-at-Hard generation (``SoftThinkingConfig.iterate_hard``).

:func:`generate_reference` decodes greedily the slow, obvious way, to check the cached, selective
implementation of the patched ``generate()`` token for token:

* no KV cache: every step recomputes the whole sequence of every row from its input embeddings;
* every row runs every extra iteration (the iteration token appended to the row's sequence at the
  current token's position id, attending to the whole committed sequence and itself); the
  iteration's logits are kept only for the rows whose score was below the threshold (masking),
  and only those rows' scores decide whether they continue. With an adapter, which must act on
  the iteration token only, the committed sequence is recomputed without it into a fresh cache
  (made by the model itself, from scratch, every iteration) and the iteration token runs on it
  with the adapter;
* the iteration input is written out with ``torch.sort`` / ``softmax`` / a weighted sum of
  embedding rows, not with the fused ops;
* soft thinking, when the config asks for it, follows docs/hf.md with the public ops
  (``soft_embed``, ``route_step``), the same way tests/test_hf_generate.py's manual loop does.

It supports greedy decoding, left padding, Cold Stop / router / budget / think-end, noise
(keyed like the patched generate: same row seeds), a decider and an adapter (duck-typed PEFT
API). It is slow (quadratic in the length, ``max_iter`` full forwards per step): tiny models only.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch

from .. import policy
from ..reference import _sort_desc
from ..routing import RouteState
from .config import SoftThinkingConfig
from .iterate import adapter_controller

__all__ = ["ReferenceOutput", "generate_reference"]


class ReferenceOutput(NamedTuple):
    """sequences [B, P + T] (prompt then generated tokens, pad after EOS); iterations int8 [B, T]
    (extra iterations kept per row and step; 0 after EOS); scores: per step, the float64 scores
    that decided something (every unfinished row's first-pass score, and the later scores of the
    rows that had iterated), for choosing thresholds away from them in tests; mode int8 [B, T]."""

    sequences: torch.Tensor
    iterations: torch.Tensor
    scores: List[torch.Tensor]
    mode: torch.Tensor


def _mixture(logits: torch.Tensor, E: torch.Tensor, top_m: int) -> torch.Tensor:
    """sum_i softmax(top-M logits)_i E[i] per row, fp32 accumulation, E's dtype."""
    x = logits.float()
    M = min(top_m, x.shape[1])
    out = []
    for b in range(x.shape[0]):
        order = _sort_desc(x[b])[:M]
        w = torch.softmax(x[b, order], dim=0)
        out.append((w[:, None] * E[order].float()).sum(0))
    return torch.stack(out).to(E.dtype)


def _score(cfg, hidden, logits: torch.Tensor) -> torch.Tensor:
    if cfg.decider is None:
        x = logits.float()
        return torch.exp(x.amax(-1) - torch.logsumexp(x, -1))
    s = cfg.decider(tuple(h[:, -1] for h in hidden), logits)
    return s[:, 0] if s.dim() == 2 else s


def _forward(model, cfg, adapters, adapter_on: bool, **kw):
    if adapters is not None and adapter_on:
        adapters.enable()
        try:
            return model(**kw)
        finally:
            adapters.disable()
    return model(**kw)


@torch.no_grad()
def generate_reference(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                       config: SoftThinkingConfig, max_new_tokens: int) -> ReferenceOutput:
    """Greedy generation with ``config`` (soft thinking and ``config.iterate_hard``), naively.

    ``config.seed`` must be set when ``config.noise`` is (the row seeds are derived from it as in
    the patched ``generate``). The model's ``generation_config`` supplies ``eos_token_id`` and
    ``pad_token_id``; no other logits processor is applied (use it for models whose generation
    config adds none).
    """
    from .patching import _embed_scale
    cfg = config.iterate_hard
    if cfg is None:
        raise ValueError("generate_reference: config.iterate_hard is None")
    emb = model.get_input_embeddings()
    E = emb.weight
    scale = _embed_scale(emb)
    scale = None if scale is None else scale.to(device=E.device, dtype=E.dtype)
    if config.noise is not None and config.seed is None:
        raise ValueError("generate_reference: set config.seed when config.noise is given")
    gc = model.generation_config
    eos = gc.eos_token_id if not isinstance(gc.eos_token_id, list) else gc.eos_token_id[0]
    pad = gc.pad_token_id if gc.pad_token_id is not None else eos
    te = config.think_end if isinstance(config.think_end, int) else None
    if isinstance(config.think_end, str):
        raise ValueError("generate_reference: pass think_end as a token id")
    step_cfg = policy.StepConfig.resolve(config, te, E, eos)

    B, P = input_ids.shape
    dev = input_ids.device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.clone()
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    X = emb(input_ids)
    state = RouteState.start(B, device=dev)
    seeds = policy.row_seeds(config.seed if config.seed is not None else 0, B, dev)
    unfinished = torch.ones(B, dtype=torch.bool, device=dev)
    seq = input_ids.clone()
    iters_all, modes, scores = [], [], []
    adapter = cfg.adapter is not None
    # The adapter is switched like the patched generate switches it (transformers' integration
    # or a peft.PeftModel's layers): softkernels.hf.iterate.adapter_controller.
    adapters = adapter_controller(model, cfg.adapter) if adapter else None
    if adapter:
        adapters.start()
    want_hidden = cfg.decider is not None
    try:
        for t in range(max_new_tokens):
            out = _forward(model, cfg, adapters, False, inputs_embeds=X, attention_mask=mask,
                           position_ids=pos, use_cache=False, output_hidden_states=want_hidden,
                           return_dict=True)
            cum = out.logits[:, -1]
            s = _score(cfg, out.hidden_states if want_hidden else None, cum)
            step_scores = [s[unfinished].double()]
            hard = s < cfg.threshold
            its = torch.zeros(B, dtype=torch.int8, device=dev)
            for i in range(1, cfg.max_iter):
                if not hard.any():
                    break
                mix = _mixture(cum, E, cfg.top_m)                       # every row
                if scale is not None:
                    mix = mix * scale
                mi = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
                if not adapter:
                    # The iteration token appended at the current position id.
                    Xi = torch.cat([X, mix.to(X.dtype)[:, None]], 1)
                    pi = torch.cat([pos, pos[:, -1:]], 1)
                    oi = model(inputs_embeds=Xi, attention_mask=mi, position_ids=pi,
                               use_cache=False, output_hidden_states=want_hidden,
                               return_dict=True)
                else:
                    # The committed sequence must not see the adapter: recompute it without,
                    # into a fresh cache, then run the iteration token with the adapter.
                    pre = model(inputs_embeds=X, attention_mask=mask, position_ids=pos,
                                use_cache=True, return_dict=True)
                    ck = "cache" if getattr(pre, "cache", None) is not None else "past_key_values"
                    oi = _forward(model, cfg, adapters, True, inputs_embeds=mix.to(X.dtype)[:, None],
                                  attention_mask=mi, position_ids=pos[:, -1:],
                                  use_cache=True, output_hidden_states=want_hidden,
                                  return_dict=True, **{ck: getattr(pre, ck)})
                cum = torch.where(hard[:, None], cum + oi.logits[:, -1], cum)   # masking
                its += hard.to(torch.int8)
                if i < cfg.max_iter - 1:
                    s = _score(cfg, oi.hidden_states if want_hidden else None, cum)
                    step_scores.append(s[hard & unfinished].double())
                    hard = hard & (s < cfg.threshold)
            scores.append(torch.cat(step_scores))

            # Soft thinking (docs/hf.md), greedy.
            sc = cum.float()
            last = seq[:, -1] if config.router is not None and t > 0 else None
            st = policy.step(sc, E, step_cfg, state, seeds, t, last_token=last, validate=True)
            soft = st.soft
            nxt = torch.where(st.force, st.token, sc.argmax(-1))
            nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad))
            e = emb(nxt[:, None])
            se = st.tokens.embeds if scale is None else st.tokens.embeds * scale
            e = torch.where(soft[:, None, None], se[:, None].to(e.dtype), e)
            X = torch.cat([X, e], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            pos = torch.cat([pos, pos[:, -1:] + 1], 1)
            seq = torch.cat([seq, nxt[:, None]], 1)
            iters_all.append(its.masked_fill(~unfinished, 0))
            modes.append(st.mode.masked_fill(~unfinished, 0))
            state = st.state
            if eos is not None:
                unfinished = unfinished & (nxt != eos)
            if not unfinished.any():
                break
    finally:
        if adapter:
            adapters.restore()
    return ReferenceOutput(seq, torch.stack(iters_all, 1), scores, torch.stack(modes, 1))
