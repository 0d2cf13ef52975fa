"""Hugging Face layer: soft thinking inside a model's own ``generate()``.

``softkernels.patch(model, SoftThinkingConfig(...))`` / ``softkernels.unpatch(model)``; docs/hf.md
describes the mechanism and its decisions. transformers is imported lazily (only when a patched
model generates), so ``import softkernels`` does not need it.
"""

from .config import ColdStop, ConfidenceRouter, IterateHard, SoftThinkingConfig
from .inputs import soft_inputs_from_trace
from .patching import is_patched, patch, unpatch
from .trace import END_REASONS, SoftTrace

__all__ = ["patch", "unpatch", "is_patched", "SoftThinkingConfig", "ColdStop", "ConfidenceRouter",
           "IterateHard", "SoftTrace", "END_REASONS", "soft_inputs_from_trace"]
