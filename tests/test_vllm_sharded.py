"""softkernels.vllm.sharded_mixture: the soft-token mixture over a vocabulary-sharded embedding
(vLLM tensor parallelism), with the all-reduce simulated by a sum over the shards in one process.

Runs in the main venv (no vLLM needed): the function is the one every tensor-parallel rank runs.
"""

import pytest
import torch

import softkernels as sk
from softkernels.vllm import sharded_mixture


def _shards(E, n):
    V = E.shape[0]
    bounds = [round(i * V / n) for i in range(n + 1)]
    return [(E[a:b], a, b) for a, b in zip(bounds, bounds[1:])]


def _sharded(E, n, ids, w, **kw):
    parts = []

    def all_reduce(x):          # collects every rank's partial sum; returns the total later
        parts.append(x)
        return x

    shards = _shards(E, n)
    for shard, a, b in shards:
        sharded_mixture(shard, a, b, ids, w, all_reduce, out_dtype=torch.float32)
    total = torch.stack(parts).sum(0)
    # Every rank gets `total` back from the all-reduce; run rank 0 again with it.
    shard, a, b = shards[0]
    return sharded_mixture(shard, a, b, ids, w, lambda x: total, out_dtype=E.dtype, **kw)


@pytest.mark.parametrize("shards", [1, 2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sum_of_shard_mixtures_equals_unsharded(shards, dtype):
    V, D, B, k = 1000, 16, 7, 6
    E = torch.randn(V, D).to(dtype)
    tok = sk.soft_embed(torch.randn(B, V) * 3, E, k=k, temperature=0.8, top_k=0, top_p=1.0,
                        min_p=0.0)
    got = _sharded(E, shards, tok.ids, tok.weights)
    want = sk.mix_embeddings(E, tok.ids, tok.weights)
    assert torch.equal(want, tok.embeds)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.to(dtype).float(), want.float(), atol=tol, rtol=tol)


@pytest.mark.parametrize("shards", [2, 4, 8])
def test_k1_is_bitwise(shards):
    V, D, B = 777, 32, 9
    E = torch.randn(V, D)
    tok = sk.soft_embed(torch.randn(B, V), E, k=1)
    got = _sharded(E, shards, tok.ids, tok.weights)
    assert torch.equal(got, E[tok.ids[:, 0]])
    assert torch.equal(got, tok.embeds)


def test_gaussian_added_once_after_the_reduce_with_soft_embeds_draws():
    V, D, B, k = 500, 24, 5, 4
    E = torch.randn(V, D)
    noise = sk.Gaussian(0.3, relative=False)
    seeds = torch.arange(B, dtype=torch.int64) * 7 + 1
    tok = sk.soft_embed(torch.randn(B, V), E, k=k, noise=noise, seed=seeds, offset=3)
    offsets = torch.full((B,), 3, dtype=torch.int64)
    got = _sharded(E, 4, tok.ids, tok.weights, noise=noise, seed=seeds, offset=offsets)
    torch.testing.assert_close(got, tok.embeds, atol=1e-5, rtol=1e-5)
    plain = _sharded(E, 4, tok.ids, tok.weights)
    assert (got - plain).abs().max() > 0.1       # the noise is there, once (std 0.3)
    torch.testing.assert_close((got - plain).std(), torch.tensor(0.3), atol=0.08, rtol=0)


def test_ids_outside_every_shard_contribute_nothing():
    E = torch.randn(100, 8)
    ids = torch.tensor([[3, 250, 7]])
    w = torch.tensor([[0.5, 0.25, 0.25]])
    got = _sharded(E, 2, ids, w)
    torch.testing.assert_close(got, 0.5 * E[3:4] + 0.25 * E[7:8])
