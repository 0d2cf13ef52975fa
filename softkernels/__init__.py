"""softkernels: fused CPU/CUDA kernels and Hugging Face hooks for soft thinking.

Start with :func:`soft_embed` (the fused soft-token op) and, for generation, ``patch``.
docs/semantics.md states every op's exact semantics; softkernels/reference.py is the float64
reference the tests compare against.
"""

import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  (registers torch.ops.softkernels.*)
from .noise import Dirichlet, DirichletGumbel, Gaussian, Gumbel, TopKDirichlet, WeightGaussian
from .logprob import (gaussian_logprob, gumbel_logprob, topk_dirichlet_logprob,
                      weight_gaussian_logprob)
from .mix import mix_embeddings
from .ops import soft_embed
from .routing import RouteState, RouteStep, route_step
from .iterate import SelectedRows, add_rows_, iteration_embeds, max_prob, select_rows
from .soft_tokens import SoftTokens
from .hf import (ColdStop, ConfidenceRouter, IterateHard, SoftThinkingConfig, SoftTrace, patch,
                 soft_inputs_from_trace, unpatch)
from . import presets

__version__ = "0.1.0"

__all__ = ["soft_embed", "SoftTokens", "route_step", "RouteState", "RouteStep", "Gumbel", "Dirichlet",
           "Gaussian", "TopKDirichlet", "WeightGaussian", "DirichletGumbel", "gumbel_logprob",
           "gaussian_logprob", "topk_dirichlet_logprob", "weight_gaussian_logprob", "patch", "unpatch", "SoftThinkingConfig",
           "ColdStop", "ConfidenceRouter", "SoftTrace", "mix_embeddings", "soft_inputs_from_trace",
           "IterateHard", "select_rows", "SelectedRows", "iteration_embeds", "add_rows_", "max_prob",
           "presets", "__version__"]
