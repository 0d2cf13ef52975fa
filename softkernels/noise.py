"""Noise specifications for soft tokens.

Each class describes one kind of exploration noise used by the soft-thinking literature. Pass an
instance as ``noise=`` to :func:`softkernels.soft_embed` or to ``SoftThinkingConfig``. All noise is
drawn from a counter-based generator (Philox 4x32-10) keyed by the row's ``seed`` and ``offset``,
so it is reproducible, independent of batch composition, and equal on CPU and CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple, Union

from . import _C
from ._checks import bool_arg, float_arg, pair_arg

__all__ = ["Gumbel", "Dirichlet", "Gaussian", "TopKDirichlet", "WeightGaussian",
           "DirichletGumbel", "Noise", "NOISE_CLASSES", "NOISE_NONE", "NOISE_GUMBEL",
           "NOISE_DIRICHLET", "NOISE_GAUSSIAN", "NOISE_TOPK_DIRICHLET", "NOISE_WEIGHT_GAUSSIAN",
           "NOISE_DIRICHLET_GUMBEL", "NOISE_GUMBEL_SOFT_GRPO", "NOISE_WITH_SLOTS", "noise_kind",
           "GPRIME_MODES"]

# The kernels' codes (csrc/common/macros.h NoiseKind, exported by the extension).
NOISE_NONE, NOISE_GUMBEL, NOISE_DIRICHLET, NOISE_GAUSSIAN = (
    _C.NOISE_NONE, _C.NOISE_GUMBEL, _C.NOISE_DIRICHLET, _C.NOISE_GAUSSIAN)
NOISE_TOPK_DIRICHLET, NOISE_WEIGHT_GAUSSIAN, NOISE_DIRICHLET_GUMBEL, NOISE_GUMBEL_SOFT_GRPO = (
    _C.NOISE_TOPK_DIRICHLET, _C.NOISE_WEIGHT_GAUSSIAN, _C.NOISE_DIRICHLET_GUMBEL,
    _C.NOISE_GUMBEL_SOFT_GRPO)
# Kinds whose soft_embed output ``noise`` is a [B, k] tensor (csrc/common/macros.h
# noise_has_slots): g' for the Gumbel kinds, the raw draws for TopKDirichlet / WeightGaussian.
NOISE_WITH_SLOTS = frozenset({NOISE_GUMBEL, NOISE_TOPK_DIRICHLET, NOISE_WEIGHT_GAUSSIAN,
                              NOISE_DIRICHLET_GUMBEL, NOISE_GUMBEL_SOFT_GRPO})
# Gumbel(gprime=...): softkernels' g' or SofT-GRPO's rollout g'.
GPRIME_MODES = ("softkernels", "soft_grpo")

# Ranges in which the float32 kernels stay finite (csrc/common/macros.h): tau at least the
# smallest normal float32, alpha at least 1e-30, every constant at most 1e30.
MIN_TAU, MIN_ALPHA, MAX_NOISE_PARAM = _C.MIN_TAU, _C.MIN_ALPHA, _C.MAX_NOISE_PARAM


class _GumbelFields:
    """The Gumbel perturbation's fields (tau, scale, clamp), checked once for every noise kind
    that has them (Gumbel, DirichletGumbel)."""

    def _check_gumbel_fields(self):
        name = type(self).__name__
        object.__setattr__(self, "tau", float_arg(f"{name}.tau", self.tau, lo=MIN_TAU,
                                                  hi=MAX_NOISE_PARAM))
        object.__setattr__(self, "scale", float_arg(f"{name}.scale", self.scale, lo=0.0,
                                                    hi=MAX_NOISE_PARAM))
        if self.clamp is not None:
            object.__setattr__(self, "clamp", pair_arg(f"{name}.clamp", self.clamp))

    @property
    def bounds(self) -> Tuple[float, float]:
        """The clamp as a pair of floats, (-inf, inf) when there is none."""
        return self.clamp if self.clamp is not None else (-math.inf, math.inf)


@dataclass(frozen=True)
class Gumbel(_GumbelFields):
    """Gumbel-softmax perturbation of the mixture weights (Randomized Soft Thinking, SofT-GRPO).

    On the k kept weights w: ``g' = log w + scale * clamp(g, *clamp)`` with ``g ~ Gumbel(0, 1)``
    keyed by token id, then ``w = softmax(g' / tau)`` and the slots are re-sorted. The perturbed
    log-weights g' are returned (``SoftTokens.noise``) so that training can recompute the soft
    token's log-probability with :func:`softkernels.gumbel_logprob`.

    Args:
        tau: Gumbel-softmax temperature in [1.18e-38, 1e30] (a normal float32, so that 1 / tau
            stays finite). Default 0.5, as in Randomized Soft Thinking.
        scale: multiplier of the (clamped) Gumbel variable ("noise_factor" in SofT-GRPO), in
            [0, 1e30]. Default 1.
        clamp: ``(lo, hi)`` bounds applied to g before scaling, or None for no clamp.
            Default (-1.5, 3.0), SofT-GRPO's values; they keep the log-density of g bounded.
        gprime: ``"softkernels"`` (default): g' as above on the weighted slots only (-inf on the
            others), differentiable. ``"soft_grpo"``: SofT-GRPO's rollout,
            ``g' = log(w + 1e-6) + scale * clamp(g)`` on all k slots (the unweighted ones get a
            finite g' and a small weight), ``w = softmax(g' / tau)`` over the k slots
            (zz1358m/SofT-GRPO-master@2b9d8ec, Soft-Thinking+noise+loss-main/
            sglang_soft_thinking_pkg/python/sglang/srt/layers/sampler.py:184-193), so that a trace
            can be fed to their trainer. In that mode the weights carry no gradient to the logits
            (their trainer detaches the soft inputs).
    """

    # The name of the kind in a vLLM request's extra_args (softkernels.vllm.request_args).
    wire_name: ClassVar[str] = "gumbel"
    tau: float = 0.5
    scale: float = 1.0
    clamp: Optional[Tuple[float, float]] = (-1.5, 3.0)
    gprime: str = "softkernels"

    def __post_init__(self):
        if self.gprime not in GPRIME_MODES:
            raise ValueError(f"Gumbel.gprime must be one of {GPRIME_MODES}, got {self.gprime!r}")
        self._check_gumbel_fields()


@dataclass(frozen=True)
class Dirichlet:
    """Dirichlet resampling of the filtered distribution (Randomized Soft Thinking).

    On the support that survives top_k / top_p / min_p, ``w ~ Dirichlet(alpha * p)``; the k
    largest draws are kept and renormalised. The weights are then random constants: no gradient
    flows from them to the logits.

    Args:
        alpha: concentration multiplier in [1e-30, 1e30] (smaller ones underflow the float32
            Gamma draws). Default 4.0, the value used in the paper's runs. Larger alpha means less
            noise.
    """

    wire_name: ClassVar[str] = "dirichlet"
    alpha: float = 4.0

    def __post_init__(self):
        object.__setattr__(self, "alpha", float_arg("Dirichlet.alpha", self.alpha, lo=MIN_ALPHA,
                                                    hi=MAX_NOISE_PARAM))


@dataclass(frozen=True)
class Gaussian:
    """Additive Gaussian noise on the mixed embedding (Soft Tokens, Hard Truths).

    ``embeds += sigma * N(0, I_D)``, with the normal draws keyed by embedding dimension.

    Args:
        sigma: standard deviation in [0, 1e30], in embedding units; or, when ``relative`` is True, as a
            multiple of the embedding matrix's RMS (the paper uses 0.33 x RMS). Default 0.33.
        relative: interpret sigma relative to ``sqrt(mean(E**2))``. Default True. With a relative
            sigma, :func:`softkernels.soft_embed` computes the RMS on every call (one pass over E
            and a host sync); ``patch()`` resolves it once. Use :meth:`absolute` to resolve it
            yourself, e.g. before CUDA-graph capture.
    """

    wire_name: ClassVar[str] = "gaussian"
    sigma: float = 0.33
    relative: bool = True

    def __post_init__(self):
        object.__setattr__(self, "sigma", float_arg("Gaussian.sigma", self.sigma, lo=0.0,
                                                    hi=MAX_NOISE_PARAM))
        bool_arg("Gaussian.relative", self.relative)

    def absolute(self, embedding) -> "Gaussian":
        """This noise with sigma in embedding units (resolving ``relative`` against ``embedding``)."""
        if not self.relative:
            return self
        rms = float(embedding.detach().float().pow(2).mean().sqrt())
        return Gaussian(sigma=self.sigma * rms, relative=False)


@dataclass(frozen=True)
class TopKDirichlet:
    """Dirichlet noise on the k renormalised weights after top-k (SofT-GRPO's ``-dir`` runs).

    After the filters, the k most likely survivors with weights w (renormalised over the k):
    ``G_j ~ Gamma(alpha * w_j, 1)``, ``w = G / sum G``, slots re-sorted by G
    (zz1358m/SofT-GRPO-master@2b9d8ec, Soft-Thinking+noise+loss-main/sglang_soft_thinking_pkg/
    python/sglang/srt/layers/sampler.py:165-180; their rollout multiplies the weights by a flat
    1.0 there). Unlike :class:`Dirichlet`, which redraws the whole filtered support, only the k
    kept slots are perturbed. ``SoftTokens.noise`` holds the draws G [B, k] (0 on unweighted
    slots), which :func:`softkernels.topk_dirichlet_logprob` scores. The weights are random
    constants: no gradient flows from them to the logits.

    Args:
        alpha: concentration multiplier in [1e-30, 1e30]. Default 1.0, SofT-GRPO's value.
    """

    wire_name: ClassVar[str] = "topk_dirichlet"
    alpha: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "alpha", float_arg("TopKDirichlet.alpha", self.alpha,
                                                    lo=MIN_ALPHA, hi=MAX_NOISE_PARAM))


@dataclass(frozen=True)
class WeightGaussian:
    """Gaussian noise on the k mixture weights (SofT-GRPO's default branch, its ``-gau`` runs).

    On all k slots, the unweighted ones too (w = 0): ``x_j = w_j + sigma * n_j`` with
    ``n_j ~ N(0, 1)`` keyed by token id, not clamped, then ``w = x / sum x`` (weights may be
    negative) and the slots re-sorted by w (zz1358m/SofT-GRPO-master@2b9d8ec,
    Soft-Thinking+noise+loss-main/sglang_soft_thinking_pkg/python/sglang/srt/layers/
    sampler.py:206-221). ``SoftTokens.noise`` holds the draws x [B, k], which
    :func:`softkernels.weight_gaussian_logprob` scores. No gradient flows from the weights to the
    logits.

    Args:
        sigma: standard deviation in weight units, in [0, 1e30]. Default 0.05, SofT-GRPO's value.
    """

    wire_name: ClassVar[str] = "weight_gaussian"
    sigma: float = 0.05

    def __post_init__(self):
        object.__setattr__(self, "sigma", float_arg("WeightGaussian.sigma", self.sigma, lo=0.0,
                                                    hi=MAX_NOISE_PARAM))


@dataclass(frozen=True)
class DirichletGumbel(_GumbelFields):
    """Dirichlet resampling then Gumbel-softmax, in one step (Randomized Soft Thinking with both).

    RST's order (WJMacro/Randomized-Soft-Thinking@4a95b5a, sglang_soft_thinking_pkg/python/sglang/
    srt/layers/sampler.py:221-243): ``Dirichlet(alpha * p)`` over the filtered support, the k
    largest draws renormalised (as :class:`Dirichlet`), then the Gumbel step of :class:`Gumbel`
    on those weights, ``g' = log w + scale * clamp(g)``, ``w = softmax(g' / tau)``, re-sorted.
    ``SoftTokens.noise`` holds g'. No gradient flows from the weights to the logits.

    Args:
        alpha: Dirichlet concentration multiplier in [1e-30, 1e30]. Default 4.0 (as Dirichlet).
        tau: Gumbel-softmax temperature, as :class:`Gumbel`. Default 0.5.
        scale: multiplier of the Gumbel variable, in [0, 1e30]. Default 1 (RST uses
            ``F.gumbel_softmax``: scale 1).
        clamp: ``(lo, hi)`` on g, or None. Default None (RST does not clamp).
    """

    wire_name: ClassVar[str] = "dirichlet_gumbel"
    alpha: float = 4.0
    tau: float = 0.5
    scale: float = 1.0
    clamp: Optional[Tuple[float, float]] = None

    def __post_init__(self):
        object.__setattr__(self, "alpha", float_arg("DirichletGumbel.alpha", self.alpha,
                                                    lo=MIN_ALPHA, hi=MAX_NOISE_PARAM))
        self._check_gumbel_fields()


Noise = Union[Gumbel, Dirichlet, Gaussian, TopKDirichlet, WeightGaussian, DirichletGumbel]

# Every class accepted as ``noise=`` (check membership with noise_kind, not isinstance lists).
NOISE_CLASSES = (Gumbel, Dirichlet, Gaussian, TopKDirichlet, WeightGaussian, DirichletGumbel)


def noise_kind(noise: Optional[Noise]) -> int:
    """The integer code the kernels use for a noise specification (TypeError for anything else)."""
    if noise is None:
        return NOISE_NONE
    if isinstance(noise, Gumbel):
        return NOISE_GUMBEL_SOFT_GRPO if noise.gprime == "soft_grpo" else NOISE_GUMBEL
    if isinstance(noise, Dirichlet):
        return NOISE_DIRICHLET
    if isinstance(noise, Gaussian):
        return NOISE_GAUSSIAN
    if isinstance(noise, TopKDirichlet):
        return NOISE_TOPK_DIRICHLET
    if isinstance(noise, WeightGaussian):
        return NOISE_WEIGHT_GAUSSIAN
    if isinstance(noise, DirichletGumbel):
        return NOISE_DIRICHLET_GUMBEL
    names = ", ".join(f"softkernels.{c.__name__}(...)" for c in NOISE_CLASSES)
    raise TypeError(f"noise must be None, {names}, got {type(noise).__name__} "
                    f"{noise!r}")


def noise_constants(noise: Optional[Noise]):
    """The kernels' noise constants (tau, scale, clamp_lo, clamp_hi, alpha, sigma) of a noise
    specification; a relative :class:`Gaussian` must be resolved first (``absolute``)."""
    tau = scale = alpha = sigma = 0.0
    lo, hi = -math.inf, math.inf
    if isinstance(noise, (Gumbel, DirichletGumbel)):
        tau, scale = noise.tau, noise.scale
        lo, hi = noise.bounds
    if isinstance(noise, (Dirichlet, TopKDirichlet, DirichletGumbel)):
        alpha = noise.alpha
    if isinstance(noise, (Gaussian, WeightGaussian)):
        sigma = noise.sigma
    return tau, scale, lo, hi, alpha, sigma
