"""One regression test per defect class found by fuzzing the public API (issue 11, item 3).

Each test fails on the code before the fix: a silent wrong value, undefined behaviour, or an
error that was the wrong type or did not name the argument and its value."""

import math

import pytest
import torch

import softkernels as sk
from softkernels import reference as ref

B, V, D = 3, 20, 4


def _ok():
    return torch.randn(B, V), torch.randn(V, D)


# --------------------------------------------------------------------------------------------
# Silent wrong values.

def test_entropy_of_logits_whose_fp32_range_overflows():
    # z - max overflows float32 for the -3e38 entry: it used to poison the sum (0 * -inf) and the
    # entropy came back 0.0, which Cold Stop reads as "confident".
    logits = torch.tensor([[-3e38, 3e38, 3e38], [3e38, -3e38, 1.0]])
    out = sk.soft_embed(logits, torch.randn(3, 2), k=2)
    want = ref.soft_embed_reference(logits.double(), torch.randn(3, 2).double(), k=2)
    torch.testing.assert_close(out.entropy.double(), want.entropy, atol=1e-6, rtol=1e-6)
    assert out.entropy[0].item() == pytest.approx(math.log(2), rel=1e-6)
    torch.testing.assert_close(out.max_prob.double(), want.max_prob, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: sk.Gumbel(tau=1e-300), lambda: sk.Gumbel(tau=1e-39),
                                  lambda: sk.Dirichlet(alpha=1e-300),
                                  lambda: sk.Dirichlet(alpha=1e-31),
                                  lambda: sk.Gaussian(sigma=1e300)])
def test_noise_constants_the_fp32_kernels_cannot_use_are_refused(make):
    # tau = 1e-300 rounded to 0 in float32 (1 / tau = inf), alpha = 1e-300 made every Gamma draw
    # -inf: the weights came back NaN without an error.
    with pytest.raises(ValueError, match=r"(tau|alpha|sigma) must be in \["):
        make()


@pytest.mark.parametrize("noise", [sk.Gumbel(tau=2e-38), sk.Dirichlet(alpha=1e-30),
                                   sk.Dirichlet(alpha=1e-6)])
def test_smallest_accepted_noise_constants_give_finite_weights(noise):
    logits, emb = _ok()
    out = sk.soft_embed(logits, emb, k=4, top_k=10, noise=noise)
    assert torch.isfinite(out.weights).all() and torch.isfinite(out.embeds).all()
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(B))


@pytest.mark.parametrize("sigma", [1e-25, 1e20, 1e30])
def test_gaussian_logprob_extreme_sigma_matches_float64(sigma):
    # sigma^2 under- / overflowed float32: NaN or -inf where the log-density is finite.
    x = torch.randn(2, 5)
    mean = x + torch.randn(2, 5) * (sigma * 1e-3 if sigma < 1 else 1.0)
    got = sk.gaussian_logprob(x, mean, sigma)
    want = ref.gaussian_logprob_reference(x.double(), mean.double(), sigma)
    assert torch.isfinite(want).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-3)


def test_poisoned_row_masked_out_leaves_embedding_grad_finite():
    # validate=False: a NaN row comes back poisoned (NaN weights). A caller that masks it out
    # must not get NaN in embedding.grad (NaN * 0 = NaN in the scatter-add).
    logits = torch.randn(B, V, dtype=torch.float64)
    logits[1, 3] = math.nan
    logits.requires_grad_(True)
    emb = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    out = sk.soft_embed(logits, emb, k=3, validate=False)
    assert torch.isnan(out.embeds[1]).all()
    keep = torch.tensor([True, False, True])
    out.embeds[keep].sum().backward()
    assert torch.isfinite(emb.grad).all()
    assert torch.isfinite(logits.grad).all() and (logits.grad[1] == 0).all()
    # The kept rows' gradients are the ones of a call without the poisoned row.
    l2 = logits.detach()[keep].clone().requires_grad_(True)
    e2 = emb.detach().clone().requires_grad_(True)
    sk.soft_embed(l2, e2, k=3).embeds.sum().backward()
    torch.testing.assert_close(emb.grad, e2.grad)
    torch.testing.assert_close(logits.grad[keep], l2.grad)


@pytest.mark.parametrize("which", ["soft_embed", "gumbel_logprob", "gaussian_logprob"])
def test_double_backward_raises_instead_of_silent_zero(which):
    logits = torch.randn(B, V, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(V, D, dtype=torch.float64)
    if which == "soft_embed":
        y = sk.soft_embed(logits, emb, k=3).embeds.sum()
        x = logits
    elif which == "gumbel_logprob":
        st = sk.soft_embed(logits.detach(), emb, k=3, noise=sk.Gumbel())
        y = sk.gumbel_logprob(logits, st.ids, st.noise, 0.5).sum()
        x = logits
    else:
        x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
        y = sk.gaussian_logprob(x, torch.zeros(B, D, dtype=torch.float64), 0.5).sum()
    g, = torch.autograd.grad(y, x, create_graph=True)
    with pytest.raises(RuntimeError, match=f"{which}: double backward .* not implemented"):
        g.pow(2).sum().backward()


def test_add_rows_refuses_aliasing_overlap_and_grad_leaves():
    logits = torch.randn(B, V)
    with pytest.raises(ValueError, match="src overlaps logits"):
        sk.add_rows_(logits, logits, torch.arange(B), B)
    with pytest.raises(ValueError, match="src overlaps logits"):
        sk.add_rows_(logits, logits[1:], torch.arange(2), 2)
    with pytest.raises(ValueError, match="logits has elements that share memory"):
        sk.add_rows_(torch.zeros(1, V).expand(B, V), torch.randn(B, V), torch.arange(B), B)
    leaf = torch.randn(B, V, requires_grad=True)
    with pytest.raises(ValueError, match="logits requires grad"):
        sk.add_rows_(leaf, torch.randn(B, V), torch.arange(B), B)
    # A disjoint slice of the same storage is fine, and matches the reference.
    big = torch.randn(2 * B, V)
    want = ref.add_rows_reference(big[:B].double(), big[B:].double(), torch.arange(B),
                                  torch.tensor([B]))
    sk.add_rows_(big[:B], big[B:], torch.arange(B), B)
    torch.testing.assert_close(big[:B].double(), want, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Undefined behaviour.

def test_route_step_counters_saturate_instead_of_overflowing():
    i32max = 2 ** 31 - 1
    state = sk.RouteState(torch.ones(2, dtype=torch.int8), torch.full((2,), i32max, dtype=torch.int32),
                          torch.full((2,), i32max, dtype=torch.int32))
    step = sk.route_step(torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.long), state,
                         cold_stop_entropy=1.0, cold_stop_patience=2 ** 40)
    assert step.state.low_count.tolist() == [i32max] * 2
    assert step.state.think_steps.tolist() == [i32max] * 2
    assert step.mode.tolist() == [1, 1]


@pytest.mark.parametrize("field,value", [("low_count", -1), ("think_steps", -5), ("phase", 3)])
def test_route_step_refuses_invalid_state(field, value):
    state = sk.RouteState.start(3)
    getattr(state, field)[1] = value
    with pytest.raises(ValueError, match=f"state of row 1 is invalid: .*{field} = {value}|"
                                         f"state of row 1 is invalid: {field} = {value}"):
        sk.route_step(torch.zeros(3), torch.ones(3), torch.zeros(3, dtype=torch.long), state)


# --------------------------------------------------------------------------------------------
# Wrong or unnamed errors.

def test_tiny_temperature_is_named_not_reported_as_nan_logits():
    logits, emb = _ok()
    with pytest.raises(ValueError, match=r"temperature = 1e-40 .* 1 / temperature"):
        sk.soft_embed(logits, emb, k=2, temperature=1e-40)
    # float64 logits compute in float64, where 1e-40 is fine.
    out = sk.soft_embed(logits.double(), emb.double(), k=2, temperature=1e-40)
    assert torch.isfinite(out.weights).all()


@pytest.mark.parametrize("name,rows,match", [
    ("temperature", [1.0, 1e-40, 1.0], r"temperature\[1\] = 1e-40"),
    ("temperature", [1.0, math.inf, 1.0], r"temperature\[1\] = inf"),
    ("min_p", [0.0, 1 - 1e-12, 0.0], r"min_p\[1\] = 0.999999999999 \(rounds to 1.0 in float32\)"),
    ("top_p", [1.0, 1e-50, 1.0], r"top_p\[1\] = 1e-50 \(rounds to 0.0 in float32\)"),
])
def test_per_row_parameters_out_of_range_after_fp32_rounding_are_named(name, rows, match):
    logits, emb = _ok()
    with pytest.raises(ValueError, match=match):
        sk.soft_embed(logits, emb, k=2, **{name: torch.tensor(rows, dtype=torch.float64)})


HUGE = 10 ** 400


@pytest.mark.parametrize("call", [
    lambda: sk.soft_embed(*_ok(), k=2, temperature=HUGE),
    lambda: sk.soft_embed(*_ok(), k=2, top_p=HUGE),
    lambda: sk.soft_embed(*_ok(), k=2, min_p=HUGE),
    lambda: sk.Gumbel(tau=HUGE), lambda: sk.Gumbel(scale=HUGE), lambda: sk.Gumbel(clamp=(0, HUGE)),
    lambda: sk.Dirichlet(alpha=HUGE), lambda: sk.Gaussian(sigma=HUGE),
    lambda: sk.route_step(torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.long),
                          sk.RouteState.start(2), think_end_id=HUGE),
    lambda: sk.route_step(torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.long),
                          sk.RouteState.start(2), cold_stop_entropy=HUGE),
    lambda: sk.route_step(torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.long),
                          sk.RouteState.start(2), cold_stop_patience=HUGE),
    lambda: sk.route_step(torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.long),
                          sk.RouteState.start(2), max_think_tokens=2 ** 63),
    lambda: sk.gumbel_logprob(torch.randn(2, V), torch.zeros(2, 2, dtype=torch.long),
                              torch.zeros(2, 2), 0.5, clamp=(0, HUGE)),
    lambda: sk.gaussian_logprob(torch.randn(2, D), torch.randn(2, D), HUGE),
    lambda: sk.select_rows(torch.rand(3), HUGE),
    lambda: sk.add_rows_(torch.randn(2, V), torch.randn(2, V), torch.arange(2), 2 ** 63),
    lambda: sk.SoftThinkingConfig(temperature=HUGE), lambda: sk.ColdStop(entropy_threshold=HUGE),
    lambda: sk.ConfidenceRouter(HUGE),
])
def test_huge_python_ints_give_value_errors(call):
    with pytest.raises(ValueError, match=r"must be in|too large"):
        call()


def test_size_one_dims_with_odd_strides_are_accepted():
    # A [B, 1] view with stride 4 along its size-1 dim is contiguous for torch; the kernel's
    # check used to refuse it ("rows must be contiguous").
    logits = torch.randn(4, B).t()[:, :1]
    emb = torch.randn(4, 1).t().contiguous().t()[:1]      # [1, 1]
    assert logits.stride(1) != 1
    out = sk.soft_embed(logits, emb, k=1)
    assert out.ids.tolist() == [[0]] * B
    torch.testing.assert_close(out.embeds, emb.expand(B, 1))
    e1 = torch.randn(1, 5).t()                            # [5, 1], stride (1, 5)
    got = sk.mix_embeddings(e1, torch.tensor([[0, 3]]), torch.tensor([[0.25, 0.75]]))
    torch.testing.assert_close(got, 0.25 * e1[0:1] + 0.75 * e1[3:4])


def test_route_step_state_errors_are_named():
    args = (torch.zeros(2), torch.ones(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match="state must be a RouteState"):
        sk.route_step(*args, None)
    with pytest.raises(ValueError, match=r"batch_size must be in \[0, .*got -1"):
        sk.RouteState.start(-1)
    with pytest.raises(TypeError, match="batch_size must be an int, got float 2.5"):
        sk.RouteState.start(2.5)


def test_iteration_embeds_rows_out_of_range_is_named():
    logits, emb = _ok()
    with pytest.raises(ValueError, match=r"rows\[1\] = 7 is not a row of logits \(B = 3\)"):
        sk.iteration_embeds(logits, emb, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match=r"rows\[0\] = -1"):
        sk.iteration_embeds(logits, emb, torch.tensor([-1]))


def test_meta_tensors_with_validate_true():
    logits, emb = torch.empty(B, V, device="meta"), torch.empty(V, D, device="meta")
    out = sk.soft_embed(logits, emb, k=2, temperature=torch.ones(B, device="meta"))
    assert out.embeds.shape == (B, D) and out.embeds.device.type == "meta"
    lp = sk.gaussian_logprob(torch.empty(B, D, device="meta"), torch.empty(B, D, device="meta"),
                             torch.ones(B, device="meta"))
    assert lp.shape == (B,)


def test_compile_with_relative_gaussian_names_the_fix():
    torch._dynamo.reset()
    logits, emb = _ok()

    @torch.compile(fullgraph=True, backend="eager")
    def f(lg, e):
        return sk.soft_embed(lg, e, k=2, noise=sk.Gaussian()).embeds

    with pytest.raises(Exception, match=r"noise.absolute\(embedding\)"):
        f(logits, emb)
    torch._dynamo.reset()

    @torch.compile(fullgraph=True, backend="eager")
    def g(lg, e, noise):
        return sk.soft_embed(lg, e, k=2, noise=noise).embeds

    noise = sk.Gaussian().absolute(emb)
    torch.testing.assert_close(g(logits, emb, noise), sk.soft_embed(logits, emb, k=2,
                                                                     noise=noise).embeds)


def test_max_prob_checks_its_input():
    with pytest.raises(TypeError, match="max_prob: logits must be a torch.Tensor, got list"):
        sk.max_prob([[1.0]])
    with pytest.raises(ValueError, match="V >= 1"):
        sk.max_prob(torch.empty(2, 0))


def test_cli_flags_out_of_range_are_usage_errors():
    from softkernels.hf.demo import build_parser
    p = build_parser()
    for argv in (["--k", "0"], ["--max-new-tokens", "0"], ["--cold-stop-patience", "-1"],
                 ["--max-think-tokens", "-3"], ["--k", "x"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)
    assert p.parse_args(["--cold-stop-patience", "0"]).cold_stop_patience == 0


def test_soft_inputs_from_trace_bad_inputs_are_named(models):
    import dataclasses
    m = models("llama")
    sk.patch(m, sk.SoftThinkingConfig(k=3))
    try:
        ids = torch.randint(0, m.config.vocab_size, (2, 5))
        out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                         do_sample=False, return_dict_in_generate=True)
    finally:
        sk.unpatch(m)
    tr, seq = out.soft_trace, out.sequences
    emb = m.get_input_embeddings().weight
    with pytest.raises(TypeError, match="sequences must hold integer token ids, got torch.float32"):
        sk.soft_inputs_from_trace(tr, m, seq.float())
    bad = seq.clone()
    bad[1, 2] = emb.shape[0] + 3
    with pytest.raises(ValueError, match=r"sequences\[1, 2\] = .* is not a row of the embedding"):
        sk.soft_inputs_from_trace(tr, m, bad)
    with pytest.raises(ValueError, match=r"sequences\[.*is not a row of the embedding table "
                                         r"\(V_e = 7\)"):
        sk.soft_inputs_from_trace(tr, emb[:7], seq)
    with pytest.raises(ValueError, match=r"trace.seed must be the int64 \[B\] = \[2\]"):
        sk.soft_inputs_from_trace(dataclasses.replace(tr, seed=None), m, seq)
    # The valid call still works.
    assert sk.soft_inputs_from_trace(tr, m, seq).shape == (*seq.shape, emb.shape[1])


def test_patch_and_unpatch_bad_arguments_are_named(models):
    m = models("llama")
    with pytest.raises(TypeError, match="unpatch: model must be a torch.nn.Module.*NoneType"):
        sk.unpatch(None)
    with pytest.raises(TypeError, match="tokenizer must be None or a Hugging Face tokenizer.*int 5"):
        sk.patch(m, sk.SoftThinkingConfig(), tokenizer=5)
    with pytest.raises(ValueError, match="think_end"):
        sk.patch(m, sk.SoftThinkingConfig(think_end=-3))
    assert not sk.hf.is_patched(m)
