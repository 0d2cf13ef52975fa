"""Configuration of soft thinking for Hugging Face generation (``softkernels.patch``).

All classes are frozen dataclasses validated in ``__post_init__``: a bad value raises
ValueError/TypeError naming the field and the value. Use :func:`dataclasses.replace` to derive a
modified configuration. This module does not import transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

from .._checks import I64_MAX, I64_MIN, bool_arg, float_arg, int_arg
from .._checks import MAX_K as _KERNEL_MAX_K
from ..noise import Gaussian, Noise, noise_kind
from ..ops import FILTERS, ROW_PARAMS, TIES

__all__ = ["SoftThinkingConfig", "ColdStop", "ConfidenceRouter", "IterateHard", "MAX_K"]

MAX_K = _KERNEL_MAX_K   # largest mixture width the kernels support (softkernels._C.MAX_K)
_I64_MIN, _I64_MAX = I64_MIN, I64_MAX


def _int(cls: str, name: str, value, lo: int, hi: Optional[int] = None) -> int:
    return int_arg(f"{cls}.{name}", value, lo, hi)


def _float(cls: str, name: str, value, *, lo: float, hi: float, lo_open: bool,
           hi_open: bool) -> float:
    return float_arg(f"{cls}.{name}", value, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


@dataclass(frozen=True)
class ColdStop:
    """Cold Stop (Soft Thinking): end a row's thinking once its next-token distribution stays
    confident.

    When the entropy of softmax(logits / temperature) (in nats, over the whole vocabulary) is below
    ``entropy_threshold`` for ``patience`` consecutive thinking steps, the row's next token is
    forced to the think-end token (or, without one, the row switches to hard decoding).

    Args:
        entropy_threshold: threshold in nats (>= 0), or, with ``normalized=True``, in units of
            ln V. Default 0.01, Soft Thinking's value.
        patience: consecutive low-entropy thinking steps that trigger the stop (>= 1).
            Default 256, Soft Thinking's value.
        answer_abort: also count in the answer phase, as Soft Thinking's released code does: the
            counter restarts at 0 when thinking ends and, once ``patience`` consecutive answer
            steps had entropy below the threshold, the row's next token is forced to the
            end-of-sequence token (the generation config's ``eos_token_id``; vLLM: the request's
            EOS), which finishes it. Their engine instead appends that next sampled token and
            then aborts the request: the outputs differ in that last token only
            (docs/fidelity.md). Default False.
        normalized: compare ``entropy / ln V`` with the threshold (V: the width of the step's
            scores, the model's padded vocabulary), as Randomized Soft Thinking's code does; the
            rule is applied as ``entropy < threshold * ln V``, which differs from their division
            only by rounding at the boundary. Default False.
    """

    entropy_threshold: float = 0.01
    patience: int = 256
    answer_abort: bool = False
    normalized: bool = False

    def __post_init__(self):
        object.__setattr__(self, "entropy_threshold", _float(
            "ColdStop", "entropy_threshold", self.entropy_threshold, lo=0.0, hi=math.inf,
            lo_open=False, hi_open=True))
        object.__setattr__(self, "patience", _int("ColdStop", "patience", self.patience, 1,
                                                  2 ** 31 - 1))
        for name in ("answer_abort", "normalized"):
            bool_arg(f"ColdStop.{name}", getattr(self, name))


@dataclass(frozen=True)
class ConfidenceRouter:
    """ThinkRouter: a thinking step whose top probability is low is taken as a hard token.

    Per row and step, if ``max_prob < threshold`` (max_prob of softmax(logits / temperature))
    the step is hard: the model's normal decoding picks the token (argmax, or a sample when
    ``do_sample=True``) and its plain embedding is fed back. Otherwise the step is soft.

    Args:
        threshold: confidence threshold in (0, 1]. No default: pick it for your model
            (ThinkRouter's runs use values around 0.5-0.9).
    """

    threshold: float

    def __post_init__(self):
        object.__setattr__(self, "threshold", _float(
            "ConfidenceRouter", "threshold", self.threshold, lo=0.0, hi=1.0, lo_open=True,
            hi_open=False))


@dataclass(frozen=True, kw_only=True)
class IterateHard:
    """Think-at-Hard (TaH): extra latent iterations, at the same position, for hard rows only.

    At every decoding step, after the model's normal forward pass (iteration 0), each row gets a
    score: the largest probability of softmax(logits) by default, or ``decider(hidden_states,
    logits)``. Rows whose score is below ``threshold`` are *hard*: only they run an extra
    iteration, whose input embedding is ``sum_i softmax(top-M logits)_i * E[i]`` (M = ``top_m``,
    over the current cumulative logits, times the model's embed scale) at the same position, and
    whose logits are added to the cumulative logits. After each iteration the rows that ran it are
    scored again on the new cumulative logits (and, with a decider, that iteration's hidden
    states); those still below the threshold continue, up to ``max_iter`` passes in all. The next
    token (and, while thinking, the soft token) is then chosen from the cumulative logits.

    An iteration attends to the committed key/values of its row (iteration 0 of every position up
    to and including the current one) and to itself; it never changes the KV cache of the main
    pass. docs/iterate_hard.md has the details and the differences from TaH's own code.

    Args:
        max_iter: passes per token in all, first pass included (TaH's max_iter): 2 means at most
            one extra iteration; 1 switches iterations off. In [1, 64]. Default 2.
        threshold: a row is hard when its score is below it (required; any number, not NaN).
        top_m: M, the number of top logits mixed into the iteration input, in [1, 1024]
            (clamped to the vocabulary). Default 100 (TaH's).
        decider: None (score = max_prob of softmax(cumulative logits)) or a callable
            ``decider(hidden_states, logits) -> scores``: ``hidden_states`` is the tuple of the
            model's hidden states (``output_hidden_states``: embedding output first, last layer
            last), each [N, D] at the current position, ``logits`` the [N, V] cumulative logits of
            the same N rows; it returns a float tensor [N] (hard when below ``threshold``). It must
            treat rows independently. A TaH decider that outputs the probability to continue
            iterating fits as ``lambda h, l: 1 - p(h, l)`` with threshold ``1 - tah_threshold``.
        adapter: None, or the name of a PEFT adapter (e.g. TaH's LoRA) that is enabled only
            during the extra iterations: an adapter loaded with transformers' PEFT integration
            (``model.load_adapter``), or the active adapter of a ``peft.PeftModel``
            (``peft_model.set_adapter(name)``). Default None.
    """

    max_iter: int = 2
    threshold: float
    top_m: int = 100
    decider: Optional[Callable] = None
    adapter: Optional[str] = None

    def __post_init__(self):
        c = "IterateHard"
        object.__setattr__(self, "max_iter", _int(c, "max_iter", self.max_iter, 1, 64))
        object.__setattr__(self, "threshold", _float(c, "threshold", self.threshold,
                                                     lo=-math.inf, hi=math.inf, lo_open=False,
                                                     hi_open=False))
        object.__setattr__(self, "top_m", _int(c, "top_m", self.top_m, 1, MAX_K))
        if self.decider is not None and not callable(self.decider):
            raise TypeError(f"{c}.decider must be None or a callable (hidden_states, logits) -> "
                            f"scores, got {type(self.decider).__name__} {self.decider!r}")
        if self.adapter is not None and (not isinstance(self.adapter, str) or not self.adapter):
            raise TypeError(f"{c}.adapter must be None or a non-empty adapter name (str), got "
                            f"{type(self.adapter).__name__} {self.adapter!r}")


@dataclass(frozen=True)
class SoftThinkingConfig:
    """How a patched model thinks (see ``softkernels.patch``).

    Thinking starts at the first generated token. While a row thinks, each step feeds back a soft
    token (the weighted mixture of the embeddings of its top-k candidates) and emits its top-1
    candidate into the output sequence (a readable trace). Thinking ends when the model generates
    ``think_end`` itself, by Cold Stop, or when the budget ``max_think_tokens`` runs out; from
    then on the row decodes normally (hard tokens, the generation config's greedy or sampling).

    The soft-token distribution is computed from the scores after Hugging Face's logits
    processors (repetition penalty, bad words, min length, processors you pass to ``generate``)
    and instead of its sampling warpers: ``temperature``, ``top_k``, ``top_p`` and ``min_p`` below
    apply to soft steps; the generation config's own ones apply to hard steps.

    Args:
        k: mixture width (number of candidates mixed), 1 <= k <= 1024, or None for the whole
            vocabulary (k = V, the model's score width; Soft Tokens, Hard Truths). With None every
            soft step runs :func:`softkernels.soft_embed`'s full-vocabulary path (for V > 1024:
            ATen ops over all V tokens, a [B, V] x [V, D] product per step instead of the fused
            kernel's k rows); ``noise`` must then be None or :class:`softkernels.Gaussian`
            (ValueError here otherwise), ``top_k`` may be any value, and a recorded
            ``SoftTrace`` holds ids and weights of shape [B, T, V] (12 bytes per row, step and
            token: SmolLM2's V = 49152 over 1000 steps is ~0.6 GB per row). Default 10.
        temperature: softmax temperature of the soft-token distribution (> 0). Default 0.6.
        top_k: keep the top_k most likely tokens before mixing; 0 switches it off. Values
            between 1024 and the vocabulary size are refused by the kernel (filters work inside
            a row's 1024 most likely tokens), except with ``k=None``. Default 30.
        top_p: nucleus filter in (0, 1]; 1 switches it off. Default 0.95.
        min_p: drop tokens with p < min_p * max p, in [0, 1); 0 switches it off. Default 0.001.
        noise: None or any noise :func:`softkernels.soft_embed` accepts
            (``softkernels.noise.NOISE_CLASSES``: Gumbel, Dirichlet, Gaussian, TopKDirichlet,
            WeightGaussian, DirichletGumbel); a :class:`softkernels.Gaussian` sigma is relative to
            the RMS of the input embedding matrix when ``relative=True``, resolved once per
            ``generate`` call. Default None.
        ties: how the top_k / top_p cuts treat tokens tied with the last kept one
            (:func:`softkernels.soft_embed`'s ``ties``): ``"exact"`` keeps exactly top_k tokens /
            the shortest top_p prefix, equal ones by the lower id; ``"keep_all"`` keeps every
            tied token, as FlashInfer's renorm (the Soft Thinking, RST and SofT-GRPO samplers)
            does. Default ``"exact"``.
        think_end: the token that ends thinking: a token id (int >= 0), a string that the
            tokenizer maps to exactly one token (e.g. ``"</think>"``; pass ``tokenizer=`` to
            ``patch``, or to ``generate`` along with a per-call ``soft_thinking=`` config), or
            None for models that do not think in tags (then
            thinking ends only by Cold Stop or the budget, and the row switches to hard tokens).
            Default None.
        cold_stop: :class:`ColdStop` or None (off). Default None.
        router: :class:`ConfidenceRouter` or None (every thinking step is soft). Default None.
        max_think_tokens: thinking budget in tokens (>= 0) or None (unbounded). After this many
            thinking tokens the think-end token is forced (with ``think_end=None`` the row
            switches to hard tokens). Default None.
        seed: int keying the soft-token noise (Philox; each row gets its own stream derived from
            the seed and its batch index, each step its own offset), or None to draw a fresh seed
            from torch's default generator at every ``generate`` call (so ``torch.manual_seed``
            makes runs reproducible). Default None.
        iterate_hard: :class:`IterateHard` (Think-at-Hard: extra iterations at the same position
            for the rows judged hard, at every step, thinking or not) or None. Default None. For
            plain hard decoding with iterations, combine it with ``max_think_tokens=0`` (and
            ``think_end=None``): every step is then a hard step.
    """

    k: Optional[int] = 10
    temperature: float = 0.6
    top_k: int = 30
    top_p: float = 0.95
    min_p: float = 0.001
    noise: Optional[Noise] = None
    think_end: Union[None, int, str] = None
    cold_stop: Optional[ColdStop] = None
    router: Optional[ConfidenceRouter] = None
    max_think_tokens: Optional[int] = None
    seed: Optional[int] = None
    iterate_hard: Optional[IterateHard] = None
    ties: str = "exact"

    @property
    def filters(self) -> dict:
        """soft_embed's filter arguments of this config: {"temperature": ..., "top_k": ..., ...}
        (softkernels.ops.FILTERS)."""
        return {n: getattr(self, n) for n in FILTERS}

    def __post_init__(self):
        c = "SoftThinkingConfig"
        if self.k is not None:
            object.__setattr__(self, "k", _int(c, "k", self.k, 1, MAX_K))
        for name in FILTERS:  # soft_embed's sampling filters, in the ranges it declares
            p = ROW_PARAMS[name]
            v = getattr(self, name)
            v = (_int(c, name, v, p.lo + p.lo_open, p.hi - p.hi_open) if p.integer else
                 _float(c, name, v, lo=p.lo, hi=p.hi, lo_open=p.lo_open, hi_open=p.hi_open))
            object.__setattr__(self, name, v)
        try:
            noise_kind(self.noise)  # every noise soft_embed accepts
        except TypeError:
            raise TypeError(f"{c}.noise must be None or a softkernels noise (Gumbel, Dirichlet, "
                            f"Gaussian, TopKDirichlet, WeightGaussian, DirichletGumbel), got "
                            f"{type(self.noise).__name__} {self.noise!r}") from None
        if self.k is None and self.noise is not None and not isinstance(self.noise, Gaussian):
            # soft_embed's full-vocabulary path (k = V > 1024) has no other noise; refused here
            # rather than at the first generate step on a large-vocabulary model.
            raise ValueError(f"{c}: k = None (the whole vocabulary) takes noise None or "
                             f"Gaussian(...), got noise = {self.noise!r}")
        if not isinstance(self.ties, str) or self.ties not in TIES:
            raise ValueError(f"{c}.ties must be one of {tuple(TIES)}, got {self.ties!r}")
        te = self.think_end
        if te is not None:
            if isinstance(te, str):
                if te == "":
                    raise ValueError(f"{c}.think_end must be a non-empty string, a token id or "
                                     "None, got ''")
            else:
                object.__setattr__(self, "think_end", _int(c, "think_end", te, 0))
        if self.cold_stop is not None and not isinstance(self.cold_stop, ColdStop):
            raise TypeError(f"{c}.cold_stop must be None or softkernels.ColdStop(...), got "
                            f"{type(self.cold_stop).__name__} {self.cold_stop!r}")
        if self.router is not None and not isinstance(self.router, ConfidenceRouter):
            raise TypeError(f"{c}.router must be None or softkernels.ConfidenceRouter(...), got "
                            f"{type(self.router).__name__} {self.router!r}")
        if self.max_think_tokens is not None:
            object.__setattr__(self, "max_think_tokens", _int(
                c, "max_think_tokens", self.max_think_tokens, 0, 2 ** 31 - 1))
        if self.seed is not None:
            object.__setattr__(self, "seed", _int(c, "seed", self.seed, _I64_MIN, _I64_MAX))
        if self.iterate_hard is not None and not isinstance(self.iterate_hard, IterateHard):
            raise TypeError(f"{c}.iterate_hard must be None or softkernels.IterateHard(...), got "
                            f"{type(self.iterate_hard).__name__} {self.iterate_hard!r}")
