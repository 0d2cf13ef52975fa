"""An independent port of Soft Thinking's Cold Stop (eric-ai-lab/Soft-Thinking@b97407c, the
sglang fork in sglang_soft_thinking_pkg/python/sglang/srt/), rewritten from reading the code.

What it reproduces, per request:

* the entropy, layers/sampler.py:141: ``-sum p log(max(p, 1e-12))`` of p = softmax(logits / T)
  over the whole (padded) vocabulary, before any filter (sampler.py:120-121 divide and softmax);
* managers/schedule_batch.py:726-775 ``Req.update_topk_info``, run once per decoded token after
  the token is appended (managers/scheduler_output_processor_mixin.py:241 append, :243
  ``check_finished``, :281 ``update_topk_info``):
  - thinking (:735-759): the counter of consecutive steps with entropy < threshold (:737-741);
    at ``patience`` (:742) the token just appended is replaced by the think-end token and the
    counter restarts (:746, :750); a think-end token (sampled or forced) leaves thinking and
    restarts the counter (:752-760);
  - answering (:761-769): the same counter keeps running; at ``patience`` the request is marked
    ``to_abort`` (:769), which ``check_finished`` (:678-686) turns into FINISH_ABORT when the
    NEXT token has been appended: the request ends one token after the step that reached it.
* Randomized Soft Thinking (WJMacro/Randomized-Soft-Thinking@4a95b5a) has the same state machine
  (schedule_batch.py:2617-2649) and divides the entropy by ln V (layers/sampler.py:175-176).

Only the stopping rule is ported; the model's tokens come from the caller.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch


def entropy(logits: torch.Tensor, temperature: float, normalized: bool = False) -> torch.Tensor:
    """[B] float64 entropy as their sampler computes it (sampler.py:141; RST's :175-176)."""
    p = torch.softmax(logits.double() / temperature, dim=-1)
    h = -(p * torch.log(p.clamp(min=1e-12))).sum(-1)
    if normalized:
        h = h / math.log(logits.shape[-1])
    return h


class Request:
    """One request's Cold Stop state (their ``Req`` fields that the rule touches)."""

    def __init__(self, threshold: float, patience: int, think_end: int,
                 eos: Optional[int]):
        self.threshold = threshold
        self.patience = patience
        self.think_end = think_end
        self.eos = eos
        self.thinking = True
        self.low = 0
        self.to_abort = False
        self.output: List[int] = []
        self.finished: Optional[str] = None   # "abort" / "eos"

    def decode(self, token: int, entropy: float) -> None:
        """One decoded token and the entropy of the distribution it came from."""
        if self.finished:
            return
        self.output.append(token)
        # check_finished (:678-700): a pending abort wins over the token just appended.
        if self.to_abort:
            self.finished = "abort"
            return
        if self.eos is not None and token == self.eos:
            self.finished = "eos"
            return
        if self.threshold <= 0:
            return
        low_step = entropy < self.threshold
        if self.thinking:
            self.low = self.low + 1 if low_step else 0
            if self.low >= self.patience:
                self.output[-1] = self.think_end
                self.low = 0
            if self.output[-1] == self.think_end:
                self.thinking = False
                self.low = 0
        else:
            self.low = self.low + 1 if low_step else 0
            if self.low >= self.patience:
                self.to_abort = True


def run(tokens: Sequence[Sequence[int]], entropies: Sequence[Sequence[float]], *,
        threshold: float, patience: int, think_end: int, eos: Optional[int]):
    """Replays rows of (token the model would emit, entropy) pairs; returns the Requests.

    ``tokens[b][t]`` is what row b's sampler picks at step t (thinking: the top-1 soft slot,
    answering: the sampled token); the rule may replace it (think-end) or end the row."""
    out = []
    for toks, ents in zip(tokens, entropies):
        r = Request(threshold, patience, think_end, eos)
        for tok, h in zip(toks, ents):
            r.decode(int(tok), float(h))
        out.append(r)
    return out


# --------------------------------------------------------------------------------------------
# The soft-token sampler: ST:srt/layers/sampler.py:120-170 (flashinfer backend, soft rows).

def _flashinfer_top_k(p: torch.Tensor, k: int) -> torch.Tensor:
    """FlashInfer's top_k_renorm_prob as ST calls it (sampler.py:149): every token whose
    probability is at least the k-th largest stays (ties at the cut all stay), renormalised."""
    if not 0 < k < p.shape[-1]:
        return p
    kth = p.topk(k, dim=-1).values[..., -1:]
    q = torch.where(p >= kth, p, torch.zeros_like(p))
    return q / q.sum(-1, keepdim=True)


def _flashinfer_top_p(p: torch.Tensor, top_p: float) -> torch.Tensor:
    """FlashInfer's top_p_renorm_prob (sampler.py:150): the pivot is the probability of the first
    token (in descending order) at which the running mass reaches top_p; every token at least as
    likely as the pivot stays (ties kept), renormalised."""
    if top_p >= 1.0:
        return p
    s, _ = p.sort(-1, descending=True)
    cs = s.cumsum(-1)
    m = (cs < top_p).sum(-1, keepdim=True).clamp(max=p.shape[-1] - 1)
    pivot = s.gather(-1, m)
    q = torch.where(p >= pivot, p, torch.zeros_like(p))
    return q / q.sum(-1, keepdim=True)


def sampler(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float, min_p: float,
            max_topk: int, dtype=torch.float32):
    """(ids [B, max_topk], weights [B, max_topk]) of ST's soft rows without noise, in ``dtype``:
    softmax(logits / T) (:120-121), top-k then top-p renorm (:149-150), min-p mask and renorm
    (:153-158), torch.topk(max_topk) and renorm (:169-170)."""
    p = torch.softmax(logits.to(dtype) / temperature, dim=-1)
    p = _flashinfer_top_k(p, top_k)
    p = _flashinfer_top_p(p, top_p)
    if min_p > 0:
        p = p.masked_fill(p < p.max(-1, keepdim=True).values * min_p, 0.0)
        p = p / p.sum(-1, keepdim=True)
    w, ids = torch.topk(p, k=max_topk, dim=-1)
    return ids, w / w.sum(-1, keepdim=True)
