"""``soft_inputs_from_trace``: the input embeddings a soft-thinking generation fed, rebuilt exactly.

A training forward (SofT-GRPO, Soft Tokens Hard Truths) must see what the rollout saw: at every
position the model was fed either the plain embedding of a token (prompt, hard steps, forced
think-end steps) or a soft token. The trace (:class:`softkernels.SoftTrace`) records the soft
tokens' ids, weights and noise keys; :func:`softkernels.mix_embeddings` mixes them with soft_embed's
own kernel code, so the rebuilt inputs are bitwise the rollout's.
"""

from __future__ import annotations

from typing import Union

import torch
from torch import nn

from .._checks import INT_DTYPES, MAX_K, check_bool, skip_data_checks
from ..mix import mix_embeddings
from ..noise import Gaussian
from .trace import MODE_SOFT, SoftTrace

__all__ = ["soft_inputs_from_trace"]


def _embedding_module(embedding):
    """(module or None, weight) from an nn.Embedding, a model, or a weight tensor."""
    if isinstance(embedding, torch.Tensor):
        return None, embedding
    if isinstance(embedding, nn.Embedding):
        return embedding, embedding.weight
    get = getattr(embedding, "get_input_embeddings", None)
    if callable(get):
        emb = get()
        if isinstance(emb, nn.Embedding):
            return emb, emb.weight
    raise TypeError("soft_inputs_from_trace: embedding must be the model's input embedding "
                    "(an nn.Embedding, e.g. model.get_input_embeddings()), the model itself, or "
                    f"the embedding matrix [V_e, D]; got {type(embedding).__name__}")


def _full_vocab_mixture(fn, trace: SoftTrace, weight, gaussian: bool, validate: bool):
    """[B, T, D]: the mixtures of a ``k=None`` trace (k = V > MAX_K slots), computed as
    soft_embed's full-vocabulary path computes them (softkernels/full_vocab.py): per step, the
    [B, V] weights scattered to token order times E[:V] in fp32 (fp64 for an fp64 table), plus
    the Gaussian draw; one [B, V] x [V, D] product per step, the shapes generation used, so the
    summation order (and the result) is the rollout's."""
    B, T, V = trace.ids.shape
    if V > weight.shape[0]:
        raise ValueError(f"{fn}: the trace mixes V = {V} tokens but the embedding table has only "
                         f"{weight.shape[0]} rows; pass the generating model's input embedding")
    if validate and trace.ids.numel() and not skip_data_checks(trace.ids):
        if bool(((trace.ids < 0) | (trace.ids >= V)).any()):
            raise ValueError(f"{fn}: trace.ids holds ids outside [0, V) = [0, {V})")
    macc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    table = weight[:V].to(macc)
    steps = []
    for t in range(T):
        full = torch.zeros(B, V, dtype=macc, device=weight.device).scatter(
            -1, trace.ids[:, t], trace.weights[:, t].to(macc))
        acc = full @ table
        if gaussian and trace.noise_params.sigma > 0 and B:
            zero_e = torch.zeros(1, weight.shape[1], dtype=macc, device=weight.device)
            slot = torch.zeros(B, 1, dtype=torch.int64, device=weight.device)
            acc = acc + mix_embeddings(zero_e, slot, torch.zeros(B, 1, dtype=macc,
                                                                 device=weight.device),
                                       noise=trace.noise_params, seed=trace.seed,
                                       offset=trace.offset[:, t], validate=False)
        steps.append(acc.to(weight.dtype))
    if not steps:
        return torch.zeros(B, 0, weight.shape[1], dtype=weight.dtype, device=weight.device)
    return torch.stack(steps, 1)


def soft_inputs_from_trace(
    trace: SoftTrace,
    embedding: Union[nn.Module, torch.Tensor],
    sequences: torch.Tensor,
    *,
    include_prompt: bool = True,
    validate: bool = True,
) -> torch.Tensor:
    """The ``inputs_embeds`` a soft-thinking ``generate`` call fed the model, rebuilt from its trace.

    Position ``prompt_length + t`` of ``sequences`` holds the token emitted at step t. The rollout
    fed that position (as the input of the forward that produced step t + 1):

    * soft steps (``trace.mode == 1``): ``embed_scale * (sum_j weights[t, j] E[ids[t, j]]
      + sigma * N(0, I))``, rebuilt here with :func:`softkernels.mix_embeddings` (soft_embed's own
      mixing code: same fp32 accumulation order, same Philox draws keyed by ``trace.seed`` and
      ``trace.offset``), so the result is bitwise what the rollout fed;
    * hard steps and forced think-end steps (mode 0 and 2), and the prompt: the embedding of the
      token in ``sequences`` as the embedding module computes it (times Gemma's ``embed_scale``).

    Feed the result as ``model(inputs_embeds=..., attention_mask=...)`` with the generation's
    attention mask (left padding included) to get, at every position, logits computed from
    exactly the rollout's inputs. Two positions differ from what the rollout fed, and neither can
    change a valid position's logits under a causal mask: the last generated position (never fed:
    generation stopped) gets its would-be input, and steps after a row's end-of-sequence token
    (``trace.valid`` False, padding in ``sequences``) get the padding token's embedding.

    Args:
        trace: ``output.soft_trace`` of a patched ``generate(..., return_dict_in_generate=True)``.
        embedding: the model's input embedding module (``model.get_input_embeddings()``, or the
            model itself), or its weight matrix [V_e, D]. A module is called for the plain
            embeddings, exactly as during generation; with a bare matrix they are looked up and
            multiplied by ``trace.embed_scale``.
        sequences: ``output.sequences`` [B, prompt_length + T] of the same call.
        include_prompt: True (default): return [B, prompt_length + T, D], the inputs of a forward
            over prompt and generation. False: [B, T, D], the generated positions only.
        validate: check the trace's ids (a host sync); see :func:`softkernels.mix_embeddings`.

    Returns:
        Tensor in the embedding's dtype, on its device. Differentiable with respect to the
        embedding weights (through the plain lookups and the mixtures) and ``trace.weights``.
    """
    fn = "soft_inputs_from_trace"
    if not isinstance(trace, SoftTrace):
        raise TypeError(f"{fn}: trace must be a softkernels.SoftTrace (output.soft_trace), got "
                        f"{type(trace).__name__}")
    module, weight = _embedding_module(embedding)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"{fn}: the embedding matrix must be a 2-D float tensor [V_e, D], got "
                         f"{getattr(weight, 'shape', weight)}")
    if not isinstance(sequences, torch.Tensor) or sequences.dim() != 2:
        raise ValueError(f"{fn}: sequences must be output.sequences, a 2-D [B, prompt_length + T] "
                         f"tensor, got {getattr(sequences, 'shape', type(sequences).__name__)}")
    B, T, P = trace.batch_size, trace.num_steps, trace.prompt_length
    if tuple(sequences.shape) != (B, P + T):
        raise ValueError(f"{fn}: sequences has shape {tuple(sequences.shape)} but the trace "
                         f"describes {B} rows of prompt_length {P} + {T} steps = {(B, P + T)}; "
                         "pass output.sequences of the same generate call")
    check_bool(fn, "include_prompt", include_prompt)
    check_bool(fn, "validate", validate)
    if sequences.dtype not in INT_DTYPES:
        raise TypeError(f"{fn}: sequences must hold integer token ids, got {sequences.dtype}")
    if not isinstance(trace.seed, torch.Tensor) or tuple(trace.seed.shape) != (B,):
        raise ValueError(f"{fn}: trace.seed must be the int64 [B] = [{B}] Philox keys the "
                         f"rollout used, got {trace.seed!r:.80}")
    Ve = weight.shape[0]
    if validate and sequences.numel() and not skip_data_checks(sequences):
        bad = ((sequences < 0) | (sequences >= Ve)).nonzero()
        if bad.numel():
            b, t = (int(i) for i in bad[0])
            raise ValueError(f"{fn}: sequences[{b}, {t}] = {int(sequences[b, t])} is not a row "
                             f"of the embedding table (V_e = {Ve}); pass the output.sequences "
                             "and the input embedding of the same model")
    device = weight.device
    if trace.mode.device != device or sequences.device != device:
        raise ValueError(f"{fn}: the trace ({trace.mode.device}), sequences ({sequences.device}) "
                         f"and the embedding ({device}) must be on one device; use trace.to() "
                         "and sequences.to()")

    scale = None
    if trace.embed_scale is not None:
        scale = torch.tensor(trace.embed_scale, dtype=weight.dtype, device=device)
    if module is not None:
        from .patching import _embed_scale
        got = _embed_scale(module)
        got = None if got is None else float(got.to(weight.dtype))
        if got != trace.embed_scale:
            raise ValueError(f"{fn}: the trace was recorded with embed_scale {trace.embed_scale} "
                             f"but this embedding module scales its rows by {got}; pass the "
                             "generating model's input embedding")

    tokens = sequences if include_prompt else sequences[:, P:]
    if module is not None:
        plain = module(tokens)
    else:
        plain = nn.functional.embedding(tokens, weight)
        if scale is not None:
            plain = plain * scale
    if T == 0:
        return plain
    gaussian = isinstance(trace.noise_params, Gaussian)
    # Every step is mixed (no data-dependent shapes); torch.where keeps the soft
    # ones. Non-soft steps still hold valid slots (soft_embed ran on every row).
    if trace.ids.shape[-1] > MAX_K:
        soft = _full_vocab_mixture(fn, trace, weight, gaussian, validate)
    else:
        soft = mix_embeddings(weight, trace.ids, trace.weights,
                              noise=trace.noise_params if gaussian else None,
                              seed=trace.seed.unsqueeze(1).expand(B, T), offset=trace.offset,
                              validate=validate)
    if scale is not None:
        soft = soft * scale                       # as the generation hook scales them
    is_soft = (trace.mode == MODE_SOFT).unsqueeze(-1)
    if include_prompt:
        return torch.cat([plain[:, :P], torch.where(is_soft, soft, plain[:, P:])], 1)
    return torch.where(is_soft, soft, plain)
