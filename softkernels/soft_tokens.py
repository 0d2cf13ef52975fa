"""The result type of :func:`softkernels.soft_embed`."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

__all__ = ["SoftTokens"]


class SoftTokens(NamedTuple):
    """Soft tokens for a batch of rows.

    Attributes:
        embeds: [B, D] mixed input embeddings, in the embedding matrix's dtype (accumulated in fp32).
        ids: [B, k] int64 token ids of the mixture slots, by descending weight. Slots past the
            surviving candidates have weight 0 and hold the next most probable tokens.
        weights: [B, k] mixture weights (fp32; fp64 for fp64 logits); each row sums to 1.
        entropy: [B] entropy of softmax(logits / T) over the whole vocabulary, in nats, before any
            filtering (fp32 / fp64). Not differentiable.
        max_prob: [B] largest probability of softmax(logits / T) (fp32 / fp64). Not differentiable.
        noise: [B, k] in slot order: the perturbed log-weights g' of the Gumbel kinds (Gumbel,
            DirichletGumbel; -inf where the weight is 0, except Gumbel(gprime="soft_grpo")), the
            Gamma draws G of TopKDirichlet (0 where the weight is 0), the normal draws x of
            WeightGaussian; None for the other noise kinds.
    """

    embeds: torch.Tensor
    ids: torch.Tensor
    weights: torch.Tensor
    entropy: torch.Tensor
    max_prob: torch.Tensor
    noise: Optional[torch.Tensor]
