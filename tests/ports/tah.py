"""An independent port of Think-at-Hard's iteration input (thu-nics/TaH@1e07bc3,
tah/model/tah_model.py:57-74 ``topk_softmax_input_update``), rewritten from reading the code:
the top-M logits (M = min(topk, V), :68-69), their softmax (:70) and the weighted sum of the
matching embedding rows (:71-72). TaH's M is ``input_updater_kwargs.topk``, default 100 (:349).
"""

import torch


def iteration_input(logits: torch.Tensor, embedding: torch.Tensor, topk: int = 100):
    m = min(topk, logits.shape[-1])
    vals, ids = torch.topk(logits.double(), k=m, dim=-1)
    w = torch.softmax(vals, dim=-1)
    return (w.unsqueeze(-1) * embedding.double()[ids]).sum(-2)
