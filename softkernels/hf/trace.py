"""The per-step record of a soft-thinking ``generate`` call (``output.soft_trace``).

Step t of row b produced the token ``sequences[b, prompt_length + t]``. If the step was soft
(``mode[b, t] == 1``) the model was fed, at that position, the soft token

    e = embed_scale * (sum_j weights[b, t, j] * E[ids[b, t, j]]  (+ Gaussian noise))

instead of ``E[sequences[b, prompt_length + t]]``. Everything needed to rebuild that input bit for
bit, or to recompute the soft token's log-probability under new logits (SofT-GRPO), is here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Optional

import torch

from ..noise import Gaussian, Noise
from ..routing import PHASE_THINKING

__all__ = ["SoftTrace", "trace_from_steps", "MODE_HARD", "MODE_SOFT", "MODE_FORCED_END", "END_NONE",
           "END_THINK_TOKEN", "END_BUDGET", "END_COLD_STOP", "END_REASONS"]

MODE_HARD, MODE_SOFT, MODE_FORCED_END = 0, 1, 2
END_NONE, END_THINK_TOKEN, END_BUDGET, END_COLD_STOP = 0, 1, 2, 3
END_REASONS = {END_NONE: "still thinking", END_THINK_TOKEN: "think-end token generated",
               END_BUDGET: "budget (max_think_tokens) reached", END_COLD_STOP: "Cold Stop"}


@dataclass
class SoftTrace:
    """Per step and row record of soft thinking; B rows, T generated steps, k mixture slots.

    Tensors (on the model's device):
        ids: int64 [B, T, k] token ids of the mixture slots, by descending weight (the slot order
            used for mixing). ``ids[:, :, 0]`` is the token emitted at soft steps.
        weights: float32 [B, T, k] the exact mixture weights used (after filtering, Dirichlet or
            Gumbel noise); each row sums to 1, zero beyond the surviving candidates.
        noise: float32 [B, T, k] ``SoftTokens.noise`` of each step, in slot order: the perturbed
            log-weights g' of the Gumbel kinds (-inf where the weight is 0, except
            ``Gumbel(gprime="soft_grpo")``), the draws of TopKDirichlet / WeightGaussian (what
            topk_dirichlet_logprob / weight_gaussian_logprob score); None for the other kinds.
        entropy: float32 [B, T] entropy (nats) of softmax(scores / temperature) over the vocabulary.
        max_prob: float32 [B, T] largest probability of that distribution.
        mode: int8 [B, T] 0 hard, 1 soft, 2 forced think-end. Only mode 1 steps were fed a soft
            token; everything else was fed the plain embedding of the emitted token. Steps after a
            row finished (see ``valid``) are 0.
        phase: int8 [B, T] 1 if the row is still thinking after the step, else 0.
        valid: bool [B, T] False for the steps after the row generated an end-of-sequence token
            (Hugging Face pads those positions).
        end_step: int64 [B] the step at which the row ended thinking, -1 if it never did. With a
            think-end token, that step emitted it; with ``think_end=None`` it is the first hard
            step after the thought.
        end_reason: int8 [B] why thinking ended: 0 it did not, 1 the model generated the think-end
            token, 2 budget (max_think_tokens), 3 Cold Stop. See ``END_REASONS``.
        seed: int64 [B] the Philox key of each row's noise.
        offset: int64 [B, T] the Philox offset of each row's noise at each step (the step index).

    Scalars (what produced the soft tokens):
        prompt_length: columns of ``sequences`` before step 0 (the padded prompt length).
        k, filters, ties: the soft-token parameters (``softkernels.soft_embed``'s arguments):
            ``k`` is the number of slots recorded, V (the scores' width) for
            ``SoftThinkingConfig(k=None)``; ``filters`` is {name: value} of the sampling filters
            (``softkernels.ops.FILTERS``: temperature, top_k, top_p, min_p), each also readable
            as an attribute (``trace.top_p``).
        noise_params: the noise as applied: None, Gumbel, Dirichlet, or Gaussian with
            ``relative=False`` and the absolute sigma in embedding units (before embed_scale).
        embed_scale: the factor the model's input embedding multiplies its rows by (Gemma:
            sqrt(hidden_size), rounded to the embedding dtype), or None for a plain lookup.
        think_end_id: the token that ends thinking, or None.
        max_think_tokens: the budget, or None.

    With ``SoftThinkingConfig.iterate_hard`` (Think-at-Hard):
        iterations: int8 [B, T] the number of extra iterations each row ran at each step (0 for
            easy rows, up to ``max_iter - 1``; 0 after the row finished). None without
            iterate_hard.

    Cold Stop (for plots): ``cold_stop_entropy`` the entropy threshold (nats) and
    ``cold_stop_patience`` the consecutive steps, or None without Cold Stop.
    """

    ids: torch.Tensor
    weights: torch.Tensor
    noise: Optional[torch.Tensor]
    entropy: torch.Tensor
    max_prob: torch.Tensor
    mode: torch.Tensor
    phase: torch.Tensor
    valid: torch.Tensor
    end_step: torch.Tensor
    end_reason: torch.Tensor
    seed: torch.Tensor
    offset: torch.Tensor
    prompt_length: int
    k: int
    filters: Dict[str, Any]
    noise_params: Optional[Noise]
    embed_scale: Optional[float]
    think_end_id: Optional[int]
    max_think_tokens: Optional[int]
    iterations: Optional[torch.Tensor] = None
    cold_stop_entropy: Optional[float] = None
    cold_stop_patience: Optional[int] = None
    ties: str = "exact"

    def __getattr__(self, name: str):
        # trace.temperature, trace.top_p, ...: the filters by name (only called for names that
        # are not fields).
        filters = self.__dict__.get("filters")
        if filters is not None and name in filters:
            return filters[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def batch_size(self) -> int:
        return self.mode.shape[0]

    @property
    def num_steps(self) -> int:
        """T, the number of generated steps."""
        return self.mode.shape[1]

    @property
    def soft(self) -> torch.Tensor:
        """bool [B, T]: the steps that were fed a soft token."""
        return self.mode == MODE_SOFT

    @property
    def sigma(self) -> Optional[float]:
        """Absolute Gaussian sigma (embedding units, before embed_scale), or None."""
        return self.noise_params.sigma if isinstance(self.noise_params, Gaussian) else None

    def end_reason_text(self, row: int) -> str:
        """Why row ``row`` ended thinking, in words."""
        return END_REASONS[int(self.end_reason[row])]

    def plot(self, row: int = 0, path=None, *, tokenizer=None, title: Optional[str] = None):
        """A matplotlib figure of row ``row``: what soft thinking did at every step.

        Top: entropy (nats) and max-probability per step, the Cold Stop threshold (when the call
        had one) and where thinking ended; soft steps shaded. Bottom: the top-k mixture weights
        as a heat map (slot j of step t = ``weights[row, t, j]``), labelled with the slots'
        tokens when ``tokenizer`` is given (only the first few slots get labels).

        Args:
            row: the batch row (0 <= row < B).
            path: where to save the figure as PNG (str or Path), or None.
            tokenizer: a Hugging Face tokenizer for the token labels, or None.
            title: the figure title (default: row and end reason).

        Returns:
            the ``matplotlib.figure.Figure`` (needs matplotlib; the Agg backend is used when no
            other backend was chosen, so it works without a display).
        """
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < self.batch_size:
            raise ValueError(f"SoftTrace.plot: row must be an int in [0, {self.batch_size}), got "
                             f"{row!r}")
        import matplotlib
        if "matplotlib.pyplot" not in sys.modules:     # no backend chosen yet: draw off-screen
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        valid = self.valid[row].cpu()
        T = int(valid.sum()) if valid.any() else 0
        ent = self.entropy[row, :T].float().cpu()
        mp = self.max_prob[row, :T].float().cpu()
        mode = self.mode[row, :T].cpu()
        w = self.weights[row, :T].float().cpu()           # [T, k]
        steps = list(range(T))
        end = int(self.end_step[row])

        fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(6.0, 0.28 * T + 2.5), 6.4), sharex=True,
                                     gridspec_kw={"height_ratios": [1.3, 1.0]})
        for t in steps:
            if int(mode[t]) == MODE_SOFT:
                a1.axvspan(t - 0.5, t + 0.5, color="tab:blue", alpha=0.07, lw=0)
        a1.plot(steps, ent.tolist(), "o-", ms=3, color="tab:blue", label="entropy (nats)")
        a1.set_ylabel("entropy (nats)")
        a1b = a1.twinx()
        a1b.plot(steps, mp.tolist(), "s-", ms=3, color="tab:orange", label="max probability")
        a1b.set_ylim(0, 1.05)
        a1b.set_ylabel("max probability")
        if self.cold_stop_entropy is not None:
            a1.axhline(self.cold_stop_entropy, color="tab:blue", ls="--", lw=1,
                       label=f"Cold Stop threshold ({self.cold_stop_entropy:g} nats, "
                             f"{self.cold_stop_patience} steps)")
        if end >= 0:
            for ax in (a1, a2):
                ax.axvline(end - 0.5, color="tab:red", lw=1.5)
            right = end > 0.6 * T      # the label on the side of the line with room for it
            a1.text(end - 0.6 if right else end - 0.4, 0.02,
                    f"thinking ended: {self.end_reason_text(row)}", color="tab:red",
                    ha="right" if right else "left", transform=a1.get_xaxis_transform(),
                    va="bottom", fontsize=8)
        lines = a1.get_legend_handles_labels()
        lines2 = a1b.get_legend_handles_labels()
        a1.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=7)
        a1.set_title(title or f"row {row}: {T} steps, {int((mode == MODE_SOFT).sum())} soft "
                     "(shaded)", fontsize=10)

        im = a2.imshow(w.T.numpy(), aspect="auto", origin="upper", cmap="viridis", vmin=0,
                       vmax=1, extent=(-0.5, T - 0.5, self.k - 0.5, -0.5),
                       interpolation="nearest")
        a2.set_ylabel("mixture slot (by weight)")
        a2.set_xlabel("generated step")
        a1.set_xlim(-0.5, max(T, 1) - 0.5)
        # The colour bar in an inset, so that both panels keep the same width (steps line up).
        fig.colorbar(im, cax=a2.inset_axes([1.01, 0.0, 0.015, 1.0]), label="weight")
        if tokenizer is not None and T:
            ids = self.ids[row, :T].cpu()
            for t in steps:
                for j in range(min(3, self.k)):
                    if w[t, j] > 0.05:
                        piece = tokenizer.decode([int(ids[t, j])]).replace("\n", "\\n")
                        a2.text(t, j, piece[:6], ha="center", va="center", fontsize=5,
                                color="white" if w[t, j] < 0.6 else "black", rotation=90)
        fig.tight_layout()
        if path is not None:
            fig.savefig(str(path), dpi=110)
        return fig

    def to(self, device) -> "SoftTrace":
        """A copy with every tensor moved to ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}
        return replace(self, **moved)


def trace_from_steps(rec: Dict[str, Optional[torch.Tensor]], generated: torch.Tensor,
                     eos_token_id, cfg, seed: torch.Tensor, prompt_length: int,
                     embed_scale: Optional[float],
                     iterations: Optional[torch.Tensor] = None) -> SoftTrace:
    """The :class:`SoftTrace` of B rows from what every step recorded (shared by the engines).

    Args:
        rec: per-step records stacked over T steps: "ids", "weights", "noise" (or None) [B, T, k],
            "entropy", "max_prob", "mode" (route_step's), "phase" (after the step) [B, T].
        generated: int64 [B, T] the token each step emitted (as the engine returned it).
        eos_token_id: int, list of ints or None: a row's steps after its first EOS are invalid.
        cfg: the rows' :class:`softkernels.policy.StepConfig`.
        seed: int64 [B] the rows' Philox keys; step t used offset t.
        prompt_length: columns of the engine's sequences before step 0.
        embed_scale: the input embedding's scale factor, or None.
        iterations: int8 [B, T] Think-at-Hard iterations, or None.
    """
    ids, weights, noise = rec["ids"], rec["weights"], rec["noise"]
    entropy, max_prob, mode, phase = rec["entropy"], rec["max_prob"], rec["mode"], rec["phase"]
    B, T = mode.shape
    dev = mode.device
    gen = generated.to(dev)
    if eos_token_id is None:
        valid = torch.ones(B, T, dtype=torch.bool, device=dev)
    else:
        eos = torch.as_tensor(eos_token_id, device=dev).reshape(-1)
        is_eos = torch.isin(gen, eos)
        valid = (torch.cumsum(is_eos.to(torch.int32), 1) - is_eos.to(torch.int32)) == 0
    mode = mode.masked_fill(~valid, MODE_HARD)

    te = cfg.think_end_id
    before = torch.cat([torch.ones(B, 1, dtype=phase.dtype, device=dev), phase[:, :-1]], 1)
    ends = (before == PHASE_THINKING) & (phase != PHASE_THINKING)
    if te is not None:
        ends |= (before == PHASE_THINKING) & (gen == te)
    ends &= valid
    has_end = ends.any(1)
    first = ends.to(torch.int32).argmax(1)
    end_step = torch.where(has_end, first, torch.full_like(first, -1)).to(torch.int64)
    at = first.clamp(min=0).unsqueeze(1)
    natural = torch.zeros(B, dtype=torch.bool, device=dev) if te is None or T == 0 else \
        (gen.gather(1, at).squeeze(1) == te) & (mode.gather(1, at).squeeze(1) == MODE_HARD)
    budget = torch.zeros_like(natural) if cfg.max_think_tokens is None else \
        first >= cfg.max_think_tokens
    reason = torch.where(natural, END_THINK_TOKEN, torch.where(budget, END_BUDGET, END_COLD_STOP))
    reason = torch.where(has_end, reason, END_NONE).to(torch.int8)
    # A think-end token the engine chose itself (a router-hard step's sample) is only seen by the
    # state machine one step later: make `phase` say "answering" from every row's end step on.
    steps = torch.arange(T, device=dev).unsqueeze(0)
    phase = phase.masked_fill(has_end.unsqueeze(1) & (steps >= end_step.unsqueeze(1)), 0)
    if iterations is not None:
        iterations = iterations.to(dev).masked_fill(~valid, 0)
    return SoftTrace(
        ids=ids, weights=weights, noise=noise, entropy=entropy, max_prob=max_prob, mode=mode,
        phase=phase, valid=valid, end_step=end_step, end_reason=reason,
        seed=seed.to(dev).clone(),
        offset=torch.arange(T, dtype=torch.int64, device=dev).expand(B, T).contiguous(),
        prompt_length=prompt_length, k=ids.shape[2], filters=dict(cfg.filters),
        noise_params=cfg.noise,
        embed_scale=embed_scale,
        think_end_id=te, max_think_tokens=cfg.max_think_tokens, iterations=iterations,
        cold_stop_entropy=cfg.cold_stop_entropy,
        cold_stop_patience=None if cfg.cold_stop_entropy is None else cfg.cold_stop_patience,
        ties=cfg.ties)
