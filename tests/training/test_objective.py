"""acestep.training.objective: timestep statistics, CFG dropout, the masked loss, Min-SNR, the context,
and a replay of the upstream training forward recorded in the tiny fixture."""

import math

import pytest
import torch

from acestep.errors import TrainingError
from acestep.training.objective import (
    TURBO_SHIFT3_TIMESTEPS,
    apply_cfg_dropout,
    context_latents,
    flow_target,
    masked_flow_loss,
    min_snr_weights,
    noisy_latents,
    replace_with_null,
    sample_timesteps,
    sample_turbo_timesteps,
    shifted_schedule,
)

N_DRAWS = 200_000


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _max_of_two_quantile(q: float, mu: float = -0.4, sigma: float = 1.0) -> float:
    """Quantile of max(X1, X2), Xi logit-normal: G(x) = F(x)^2, so F(x) = sqrt(q)."""
    z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(2.0 * math.sqrt(q) - 1.0, dtype=torch.float64)).item()
    return 1.0 / (1.0 + math.exp(-(mu + sigma * z)))


# --- timesteps ---

@pytest.fixture(scope="module")
def default_draws() -> tuple[torch.Tensor, torch.Tensor]:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return sample_timesteps(N_DRAWS, generator=_gen(123))


def test_timestep_statistics_match_the_model(default_draws):
    t, _ = default_draws
    t = t.double()
    assert abs(t.mean().item() - 0.535) < 0.005
    assert abs(t.median().item() - 0.536) < 0.005
    assert abs(torch.quantile(t[:100_000], 0.1).item() - 0.294) < 0.01
    assert abs(torch.quantile(t[:100_000], 0.9).item() - 0.775) < 0.01
    # The same figures from the closed form of the max of two logit-normals.
    for q, expected in ((0.1, 0.294), (0.5, 0.536), (0.9, 0.775)):
        assert abs(_max_of_two_quantile(q) - expected) < 0.001


def test_timesteps_are_the_max_of_two_logit_normals(default_draws):
    t, _ = default_draws
    x = t.double().sort().values
    logit_normal_cdf = torch.special.ndtr((torch.logit(x) - (-0.4)) / 1.0)
    n = x.numel()
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n
    lower = torch.arange(0, n, dtype=torch.float64) / n

    def ks(model_cdf):
        return torch.maximum((upper - model_cdf).abs(), (lower - model_cdf).abs()).max().item()

    assert ks(logit_normal_cdf ** 2) < 0.01
    assert ks(logit_normal_cdf) > 0.1  # a single logit-normal is clearly rejected


def test_timesteps_fp32_r_equals_t_under_autocast_and_default_dtype(default_draws):
    t, r = default_draws
    assert t.dtype == r.dtype == torch.float32
    assert torch.equal(t, r) and t.data_ptr() != r.data_ptr()
    assert ((t > 0) & (t < 1)).all()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        t64, r64 = sample_timesteps(4, generator=_gen())
    finally:
        torch.set_default_dtype(previous)
    assert t64.dtype == r64.dtype == torch.float32


def test_timesteps_reproducible_for_a_seed_and_draw_order():
    a, _ = sample_timesteps(64, generator=_gen(7))
    b, _ = sample_timesteps(64, generator=_gen(7))
    c, _ = sample_timesteps(64, generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = _gen(7)
    first, second = torch.randn(64, generator=g), torch.randn(64, generator=g)
    expected = torch.maximum(torch.sigmoid(first - 0.4), torch.sigmoid(second - 0.4))
    assert torch.equal(a, expected)
    t, _ = sample_timesteps(64, mu=0.3, sigma=0.5, generator=_gen(7), device="cpu")
    assert torch.equal(t, torch.maximum(torch.sigmoid(first * 0.5 + 0.3), torch.sigmoid(second * 0.5 + 0.3)))


def test_turbo_table_is_the_shift3_schedule():
    schedule = shifted_schedule(8, 3.0)
    assert len(schedule) == 8
    assert all(abs(a - b) < 1e-9 for a, b in zip(schedule, TURBO_SHIFT3_TIMESTEPS, strict=True))
    assert shifted_schedule(8, 1.0) == [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    shift2 = [1, .9333, .8571, .7692, .6667, .5455, .4, .2222]
    assert all(abs(a - b) < 1e-4 for a, b in zip(shifted_schedule(8, 2.0), shift2, strict=True))
    with pytest.raises(TrainingError):
        shifted_schedule(0, 3.0)
    with pytest.raises(TrainingError):
        shifted_schedule(8, 0.0)


def test_turbo_sampler_returns_only_table_values_and_all_of_them():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t, r = sample_turbo_timesteps(4000, generator=_gen(3))
    assert t.dtype == r.dtype == torch.float32 and torch.equal(t, r)
    table = torch.tensor(TURBO_SHIFT3_TIMESTEPS, dtype=torch.float32)
    assert torch.isin(t, table).all()
    counts = torch.stack([(t == value).sum() for value in table])
    assert (counts > 350).all()  # 500 expected each
    assert torch.equal(t, sample_turbo_timesteps(4000, generator=_gen(3))[0])


# --- CFG dropout ---

def _states(batch=6, length=5, width=8, dtype=torch.float32):
    return torch.randn(batch, length, width, generator=_gen(1)).to(dtype)


def _null(width=8):
    return torch.randn(1, 1, width, generator=_gen(2))


def test_cfg_dropout_replaces_exactly_the_drawn_samples():
    states, null = _states(), _null()
    before = states.clone()
    out, dropped = apply_cfg_dropout(states, null, 0.5, generator=_gen(11))
    assert torch.equal(dropped, torch.rand(6, generator=_gen(11)) < 0.5)
    assert 0 < dropped.sum() < 6
    assert torch.equal(states, before)  # not modified in place
    assert torch.equal(out[~dropped], states[~dropped])
    assert torch.equal(out[dropped], null.expand(int(dropped.sum()), 5, 8))


def test_cfg_dropout_prob_0_and_1_always_consume_one_draw():
    states, null = _states(), _null()
    for prob, expected in ((0.0, False), (1.0, True)):
        g = _gen(5)
        out, dropped = apply_cfg_dropout(states, null, prob, generator=g)
        assert dropped.dtype == torch.bool and (dropped == expected).all()
        assert torch.equal(out, null.expand_as(states) if expected else states)
        reference = _gen(5)
        torch.rand(6, generator=reference)
        assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=reference))


def test_cfg_dropout_frequency_and_dtype():
    states = _states(batch=20_000, length=1, width=4, dtype=torch.bfloat16)
    out, dropped = apply_cfg_dropout(states, _null(4), 0.15, generator=_gen(9))
    assert abs(dropped.float().mean().item() - 0.15) < 0.01
    assert out.dtype == torch.bfloat16


def test_cfg_dropout_refuses_a_missing_or_mismatched_null_embedding():
    with pytest.raises(TrainingError, match="null_condition_emb"):
        apply_cfg_dropout(_states(), None, 0.15, generator=_gen())
    with pytest.raises(TrainingError, match="null_condition_emb"):
        replace_with_null(_states(), None, torch.zeros(6, dtype=torch.bool))
    with pytest.raises(TrainingError, match="wide"):
        apply_cfg_dropout(_states(), _null(width=7), 0.15)
    with pytest.raises(TrainingError, match=r"\[0, 1\]"):
        apply_cfg_dropout(_states(), _null(), 1.5)
    out, dropped = apply_cfg_dropout(_states(), None, 0.0)  # nothing replaced: no null needed
    assert torch.equal(out, _states()) and not dropped.any()


# --- flow matching, loss, Min-SNR ---

def test_masked_loss_is_the_mean_over_valid_elements():
    pred, target = torch.randn(3, 6, 4, generator=_gen(1)), torch.randn(3, 6, 4, generator=_gen(2))
    lengths = [6, 2, 4]
    mask = torch.tensor([[1.0] * n + [0.0] * (6 - n) for n in lengths])
    loss, per_sample = masked_flow_loss(pred, target, mask)
    expected = [((pred[b, :n] - target[b, :n]) ** 2).mean() for b, n in enumerate(lengths)]
    assert torch.allclose(per_sample, torch.stack(expected), atol=1e-6, rtol=0)
    assert torch.allclose(loss, torch.stack(expected).mean(), atol=1e-6, rtol=0)
    assert loss.dtype == per_sample.dtype == torch.float32 and loss.dim() == 0
    assert torch.equal(masked_flow_loss(pred, target, mask.bool())[0], loss)


@pytest.mark.parametrize("filler", ["random", 1e6, float("nan"), float("inf")])
def test_padding_never_counts_in_loss_or_gradient(filler):
    pred, target = torch.randn(2, 7, 3, generator=_gen(1)), torch.randn(2, 7, 3, generator=_gen(2))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    clean, clean_per_sample = masked_flow_loss(pred, target, mask)
    noisy_pred, noisy_target = pred.clone(), target.clone()
    fill = torch.randn(3, 3, generator=_gen(3)) * 100 if filler == "random" else filler
    noisy_pred[1, 4:] = fill
    noisy_target[1, 4:] = -fill if filler == "random" else fill
    noisy_pred.requires_grad_(True)
    loss, per_sample = masked_flow_loss(noisy_pred, noisy_target, mask)
    assert torch.equal(loss, clean) and torch.equal(per_sample, clean_per_sample)
    loss.backward()
    assert torch.isfinite(noisy_pred.grad).all()
    assert (noisy_pred.grad[1, 4:] == 0).all() and (noisy_pred.grad[1, :4] != 0).any()


def test_masked_loss_bf16_inputs_are_computed_in_fp32():
    pred, target = torch.randn(2, 5, 3, generator=_gen(1)), torch.randn(2, 5, 3, generator=_gen(2))
    mask = torch.ones(2, 5)
    loss, _ = masked_flow_loss(pred.bfloat16(), target.bfloat16(), mask)
    expected = ((pred.bfloat16().float() - target.bfloat16().float()) ** 2).mean()
    assert loss.dtype == torch.float32 and torch.allclose(loss, expected, atol=1e-6, rtol=0)


def test_masked_loss_refuses_an_empty_sample_and_bad_shapes():
    pred = torch.randn(2, 4, 3)
    mask = torch.ones(2, 4)
    mask[1] = 0
    with pytest.raises(TrainingError, match=r"\[1\]"):
        masked_flow_loss(pred, pred, mask)
    _, per_sample = masked_flow_loss(pred, pred, mask, check_empty_samples=False)
    assert torch.isnan(per_sample[1]) and not torch.isnan(per_sample[0])
    with pytest.raises(TrainingError):
        masked_flow_loss(pred, pred[:, :3], mask)
    with pytest.raises(TrainingError):
        masked_flow_loss(pred, pred, mask[:, :3])


def test_min_snr_weights_values_edges_and_weighting():
    t = torch.tensor([0.5, 0.1, 0.9, 0.0, 1.0], dtype=torch.bfloat16)
    w = min_snr_weights(t, gamma=5.0)
    assert w.dtype == torch.float32 and torch.isfinite(w).all()
    t32 = t.float()
    snr = ((1 - t32[:3]) / t32[:3]) ** 2  # 1, 81, 1/81 (t as rounded to bf16)
    assert torch.allclose(w[:3], torch.clamp(snr, max=5.0) / snr)
    assert w[0] == 1.0 and w[2] == 1.0 and abs(w[1].item() - 5.0 / snr[1].item()) < 1e-7
    assert 0 < w[3] < 1e-9 and w[4] == 1.0
    with pytest.raises(TrainingError):
        min_snr_weights(t, gamma=0.0)
    pred, target = torch.randn(3, 4, 2, generator=_gen(1)), torch.randn(3, 4, 2, generator=_gen(2))
    mask = torch.ones(3, 4)
    weights = min_snr_weights(torch.tensor([0.5, 0.1, 0.2]), 5.0)
    _, plain = masked_flow_loss(pred, target, mask)
    loss, weighted = masked_flow_loss(pred, target, mask, weights=weights)
    assert torch.allclose(weighted, weights * plain) and torch.allclose(loss, (weights * plain).mean())


def test_noisy_latents_and_target_endpoints():
    x0, noise = torch.randn(2, 3, 4, generator=_gen(1)), torch.randn(2, 3, 4, generator=_gen(2))
    xt = noisy_latents(x0, noise, torch.tensor([1.0, 0.0]))
    assert torch.equal(xt[0], noise[0]) and torch.equal(xt[1], x0[1])
    assert torch.equal(flow_target(x0, noise), noise - x0)
    t = torch.tensor([0.3, 0.8])
    assert torch.allclose(noisy_latents(x0, noise, t) - t.view(2, 1, 1) * flow_target(x0, noise), x0, atol=1e-6)
    assert noisy_latents(x0.bfloat16(), noise.bfloat16(), t).dtype == torch.bfloat16


def test_context_latents_tiles_a_short_silence_latent():
    silence = torch.arange(3 * 2, dtype=torch.float32).reshape(1, 3, 2)
    ctx = context_latents(silence, 7, 2)
    assert ctx.shape == (2, 7, 4)
    assert torch.equal(ctx[0, :, :2], silence[0, [0, 1, 2, 0, 1, 2, 0]])
    assert (ctx[..., 2:] == 1).all() and torch.equal(ctx[0], ctx[1])
    with pytest.raises(TrainingError):
        context_latents(silence[0], 3, 1)


# --- replay of the upstream training forward (tests/fixtures/tiny-acestep-v15-turbo/README.md, (c)) ---

def test_one_generator_replays_the_upstream_draws(reference, fixture_bundle):
    """Upstream with torch.manual_seed(1): rand(B) for CFG, randn_like(x0), then sample_t_r."""
    g = _gen(1)
    states = reference["encoder.out.encoder_hidden_states"]
    after_cfg, dropped = apply_cfg_dropout(states, fixture_bundle.null_condition_emb, 0.5, generator=g)
    assert torch.equal(dropped, reference["train.rng.keep_condition"] == 0)
    assert torch.equal(after_cfg, reference["train.mid.encoder_hidden_states_after_cfg"])
    noise = torch.randn(reference["train.in.target_latents"].shape, generator=g)
    assert torch.equal(noise, reference["train.rng.noise"])
    t, r = sample_timesteps(2, generator=g)
    assert torch.equal(t, reference["train.rng.t"]) and torch.equal(r, t)


def test_replace_with_null_reproduces_the_recorded_condition(reference, fixture_bundle):
    dropped = 1 - reference["train.rng.keep_condition"]
    out = replace_with_null(reference["encoder.out.encoder_hidden_states"], fixture_bundle.null_condition_emb, dropped)
    assert torch.equal(out, reference["train.mid.encoder_hidden_states_after_cfg"])


def test_context_latents_are_the_official_text2music_context(reference, fixture_bundle):
    ctx = context_latents(fixture_bundle.silence_latent, 13, 2)
    assert torch.equal(ctx, reference["train.mid.context_latents"])


@torch.no_grad()
def test_noisy_latents_and_masked_loss_reproduce_the_upstream_loss(reference, fixture_bundle):
    x0, noise, t = reference["train.in.target_latents"], reference["train.rng.noise"], reference["train.rng.t"]
    xt = noisy_latents(x0, noise, t)
    assert torch.equal(xt, reference["train.mid.xt"])
    velocity = fixture_bundle.transformer(
        hidden_states=xt, timestep=t, timestep_r=t,
        encoder_hidden_states=reference["train.mid.encoder_hidden_states_after_cfg"],
        context_latents=reference["train.mid.context_latents"]).sample
    loss, per_sample = masked_flow_loss(velocity, flow_target(x0, noise), torch.ones(2, 13))
    assert abs(loss.item() - reference["train.out.diffusion_loss"].item()) < 1e-6
    assert per_sample.shape == (2,)
