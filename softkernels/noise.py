"""Noise specifications for soft tokens.

Each class describes one kind of exploration noise used by the soft-thinking literature. Pass an
instance as ``noise=`` to :func:`softkernels.soft_embed` or to ``SoftThinkingConfig``. All noise is
drawn from a counter-based generator (Philox 4x32-10) keyed by the row's ``seed`` and ``offset``,
so it is reproducible, independent of batch composition, and equal on CPU and CUDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from . import _C
from ._checks import bool_arg, float_arg, pair_arg

__all__ = ["Gumbel", "Dirichlet", "Gaussian", "Noise", "NOISE_NONE", "NOISE_GUMBEL",
           "NOISE_DIRICHLET", "NOISE_GAUSSIAN", "noise_kind"]

# The kernels' codes (csrc/common/macros.h NoiseKind, exported by the extension).
NOISE_NONE, NOISE_GUMBEL, NOISE_DIRICHLET, NOISE_GAUSSIAN = (
    _C.NOISE_NONE, _C.NOISE_GUMBEL, _C.NOISE_DIRICHLET, _C.NOISE_GAUSSIAN)

# Ranges in which the float32 kernels stay finite (csrc/common/macros.h): tau at least the
# smallest normal float32, alpha at least 1e-30, every constant at most 1e30.
MIN_TAU, MIN_ALPHA, MAX_NOISE_PARAM = _C.MIN_TAU, _C.MIN_ALPHA, _C.MAX_NOISE_PARAM


@dataclass(frozen=True)
class Gumbel:
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
    """

    tau: float = 0.5
    scale: float = 1.0
    clamp: Optional[Tuple[float, float]] = (-1.5, 3.0)

    def __post_init__(self):
        object.__setattr__(self, "tau", float_arg("Gumbel.tau", self.tau, lo=MIN_TAU,
                                                  hi=MAX_NOISE_PARAM))
        object.__setattr__(self, "scale", float_arg("Gumbel.scale", self.scale, lo=0.0,
                                                    hi=MAX_NOISE_PARAM))
        if self.clamp is not None:
            object.__setattr__(self, "clamp", pair_arg("Gumbel.clamp", self.clamp))

    @property
    def bounds(self) -> Tuple[float, float]:
        """The clamp as a pair of floats, (-inf, inf) when there is none."""
        return self.clamp if self.clamp is not None else (-math.inf, math.inf)


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


Noise = Union[Gumbel, Dirichlet, Gaussian]


def noise_kind(noise: Optional[Noise]) -> int:
    """The integer code the kernels use for a noise specification."""
    if noise is None:
        return NOISE_NONE
    if isinstance(noise, Gumbel):
        return NOISE_GUMBEL
    if isinstance(noise, Dirichlet):
        return NOISE_DIRICHLET
    if isinstance(noise, Gaussian):
        return NOISE_GAUSSIAN
    raise TypeError("noise must be None, softkernels.Gumbel(...), softkernels.Dirichlet(...) or "
                    f"softkernels.Gaussian(...), got {type(noise).__name__} {noise!r}")
