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

__all__ = ["Gumbel", "Dirichlet", "Gaussian", "Noise", "NOISE_NONE", "NOISE_GUMBEL",
           "NOISE_DIRICHLET", "NOISE_GAUSSIAN", "noise_kind"]

# Must match csrc/common/macros.h (NoiseKind).
NOISE_NONE, NOISE_GUMBEL, NOISE_DIRICHLET, NOISE_GAUSSIAN = 0, 1, 2, 3


def _positive_finite(cls: str, name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{cls}.{name} must be a number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{cls}.{name} must be a finite number > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Gumbel:
    """Gumbel-softmax perturbation of the mixture weights (Randomized Soft Thinking, SofT-GRPO).

    On the k kept weights w: ``g' = log w + scale * clamp(g, *clamp)`` with ``g ~ Gumbel(0, 1)``
    keyed by token id, then ``w = softmax(g' / tau)`` and the slots are re-sorted. The perturbed
    log-weights g' are returned (``SoftTokens.noise``) so that training can recompute the soft
    token's log-probability with :func:`softkernels.gumbel_logprob`.

    Args:
        tau: Gumbel-softmax temperature (> 0). Default 0.5, as in Randomized Soft Thinking.
        scale: multiplier of the (clamped) Gumbel variable ("noise_factor" in SofT-GRPO). Default 1.
        clamp: ``(lo, hi)`` bounds applied to g before scaling, or None for no clamp.
            Default (-1.5, 3.0), SofT-GRPO's values; they keep the log-density of g bounded.
    """

    tau: float = 0.5
    scale: float = 1.0
    clamp: Optional[Tuple[float, float]] = (-1.5, 3.0)

    def __post_init__(self):
        object.__setattr__(self, "tau", _positive_finite("Gumbel", "tau", self.tau))
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)):
            raise TypeError(f"Gumbel.scale must be a number, got {self.scale!r}")
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"Gumbel.scale must be a finite number >= 0, got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        if self.clamp is not None:
            if (not isinstance(self.clamp, (tuple, list)) or len(self.clamp) != 2
                    or not all(isinstance(c, (int, float)) and not isinstance(c, bool)
                               for c in self.clamp)):
                raise TypeError(f"Gumbel.clamp must be a (lo, hi) pair of numbers or None, "
                                f"got {self.clamp!r}")
            lo, hi = float(self.clamp[0]), float(self.clamp[1])
            if math.isnan(lo) or math.isnan(hi) or not lo < hi:
                raise ValueError(f"Gumbel.clamp must satisfy lo < hi, got {self.clamp!r}")
            object.__setattr__(self, "clamp", (lo, hi))

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
        alpha: concentration multiplier (> 0). Default 4.0, the value used in the paper's runs.
            Larger alpha means less noise.
    """

    alpha: float = 4.0

    def __post_init__(self):
        object.__setattr__(self, "alpha", _positive_finite("Dirichlet", "alpha", self.alpha))


@dataclass(frozen=True)
class Gaussian:
    """Additive Gaussian noise on the mixed embedding (Soft Tokens, Hard Truths).

    ``embeds += sigma * N(0, I_D)``, with the normal draws keyed by embedding dimension.

    Args:
        sigma: standard deviation (>= 0), in embedding units; or, when ``relative`` is True, as a
            multiple of the embedding matrix's RMS (the paper uses 0.33 x RMS). Default 0.33.
        relative: interpret sigma relative to ``sqrt(mean(E**2))``. Default True. With a relative
            sigma, :func:`softkernels.soft_embed` computes the RMS on every call (one pass over E
            and a host sync); ``patch()`` resolves it once. Use :meth:`absolute` to resolve it
            yourself, e.g. before CUDA-graph capture.
    """

    sigma: float = 0.33
    relative: bool = True

    def __post_init__(self):
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)):
            raise TypeError(f"Gaussian.sigma must be a number, got {self.sigma!r}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"Gaussian.sigma must be a finite number >= 0, got {self.sigma!r}")
        object.__setattr__(self, "sigma", float(self.sigma))
        if not isinstance(self.relative, bool):
            raise TypeError(f"Gaussian.relative must be a bool, got {self.relative!r}")

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
