"""The loader reproduces every reference the upstream model code produced for the tiny fixture."""

import torch
import torch.nn.functional as F

from acestep.models import load_acestep

ATOL = 1e-5


def decoder_inputs(ref, **override):
    inputs = {
        "hidden_states": ref["decoder.in.hidden_states"],
        "timestep": ref["decoder.in.timestep"],
        "timestep_r": ref["decoder.in.timestep_r"],
        "encoder_hidden_states": ref["decoder.in.encoder_hidden_states"],
        "context_latents": ref["decoder.in.context_latents"],
    }
    inputs.update(override)
    return inputs


def encoder_inputs(ref):
    return {name: ref[f"encoder.in.{name}"] for name in (
        "text_hidden_states", "text_attention_mask", "lyric_hidden_states", "lyric_attention_mask",
        "refer_audio_acoustic_hidden_states_packed", "refer_audio_order_mask")}


def assert_close(actual, expected, atol=ATOL):
    assert actual.shape == expected.shape
    diff = (actual - expected).abs().max().item()
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol}"


@torch.no_grad()
def test_decoder_matches_upstream_with_t_equal_r(fixture_bundle, reference):
    out = fixture_bundle.transformer(**decoder_inputs(reference)).sample
    assert_close(out, reference["decoder.out.velocity"])


@torch.no_grad()
def test_decoder_matches_upstream_with_t_not_equal_r(fixture_bundle, reference):
    inputs = decoder_inputs(reference, timestep_r=reference["decoder_r.in.timestep_r"])
    out = fixture_bundle.transformer(**inputs).sample
    assert_close(out, reference["decoder_r.out.velocity"])
    # time_embed_r really contributes: the t != r output differs from the t == r one.
    assert (out - reference["decoder.out.velocity"]).abs().max() > 1e-3


@torch.no_grad()
def test_decoder_masked_reference_equals_unmasked_as_upstream(fixture_bundle, reference):
    # Upstream ignores both padding masks; the masked reference is our (mask-free) output too.
    out = fixture_bundle.transformer(**decoder_inputs(reference)).sample
    assert_close(out, reference["decoder_masked.out.velocity"])


@torch.no_grad()
def test_condition_encoder_matches_upstream(fixture_bundle, reference):
    encoder = fixture_bundle.condition_encoder
    hidden, mask = encoder(**encoder_inputs(reference))
    assert_close(hidden, reference["encoder.out.encoder_hidden_states"])
    assert torch.equal(mask, reference["encoder.out.encoder_attention_mask"])
    assert_close(encoder.text_projector(reference["encoder.in.text_hidden_states"]),
                 reference["encoder.mid.text_projected"])
    lyric = encoder.lyric_encoder(inputs_embeds=reference["encoder.in.lyric_hidden_states"],
                                  attention_mask=reference["encoder.in.lyric_attention_mask"])
    assert_close(lyric, reference["encoder.mid.lyric_hidden_states"])
    timbre, timbre_mask = encoder.timbre_encoder(reference["encoder.in.refer_audio_acoustic_hidden_states_packed"],
                                                 reference["encoder.in.refer_audio_order_mask"])
    assert_close(timbre, reference["encoder.mid.timbre_embs"])
    assert torch.equal(timbre_mask, reference["encoder.mid.timbre_mask"])


@torch.no_grad()
def test_audio_tokenizer_and_detokenizer_match_upstream(fixture_bundle, reference):
    latents = reference["decoder.in.hidden_states"]  # 13 frames: padded to 15 with silence latent
    quantized, indices, mask = fixture_bundle.tokenize(latents, torch.ones(2, 13))
    assert_close(quantized, reference["tokenizer.out.quantized"])
    assert torch.equal(indices.to(torch.int32), reference["tokenizer.out.indices"])
    assert torch.equal(mask, reference["tokenizer.out.attention_mask"])
    assert_close(fixture_bundle.detokenize(reference["tokenizer.out.quantized"]),
                 reference["detokenizer.out.hidden_states"])


@torch.no_grad()
def test_tokenizer_pools_the_padding_mask_per_window(fixture_bundle, reference):
    latents = reference["decoder.in.hidden_states"]
    mask = torch.ones(2, 13)
    mask[1, 5:] = 0  # sample 1: frames 5..12 are padding, so windows 1 and 2 are empty
    _, _, pooled = fixture_bundle.tokenize(latents, mask)
    assert pooled.tolist() == [[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]


@torch.no_grad()
def test_upstream_training_loss_is_reproduced_from_recorded_draws(fixture_bundle, reference):
    ref = reference
    x0, noise, t = ref["train.in.target_latents"], ref["train.rng.noise"], ref["train.rng.t"]
    context = torch.cat([ref["train.in.src_latents"], ref["train.in.chunk_masks"]], dim=-1)
    assert_close(context, ref["train.mid.context_latents"], atol=0)
    # The silence latent the loader returns is the one upstream took its source frames from.
    assert torch.equal(fixture_bundle.silence_latent[:, :13].expand(2, -1, -1), ref["train.in.src_latents"])
    xt = t[:, None, None] * noise + (1 - t[:, None, None]) * x0
    assert_close(xt, ref["train.mid.xt"])
    keep = ref["train.rng.keep_condition"].bool()[:, None, None]
    condition = ref["encoder.out.encoder_hidden_states"]
    null = fixture_bundle.null_condition_emb.expand_as(condition)
    condition = torch.where(keep, condition, null)
    assert_close(condition, ref["train.mid.encoder_hidden_states_after_cfg"], atol=0)
    velocity = fixture_bundle.transformer(hidden_states=xt, timestep=t, timestep_r=t,
                                          encoder_hidden_states=condition, context_latents=context).sample
    assert_close(velocity, ref["train.mid.velocity"])
    loss = F.mse_loss(velocity.float(), (noise - x0).float())
    assert abs(loss.item() - ref["train.out.diffusion_loss"].item()) < 1e-6


def test_bundle_exposes_documented_shapes_and_variant(fixture_bundle):
    assert fixture_bundle.variant == "turbo"
    assert fixture_bundle.null_condition_emb.shape == (1, 1, 64)
    assert fixture_bundle.silence_latent.shape == (1, 200, 64)  # time-major after the transpose
    assert fixture_bundle.silence_latent.dtype == torch.float32
    assert not any(p.requires_grad for p in fixture_bundle.transformer.parameters())
    assert not fixture_bundle.transformer.training


def test_bf16_load_casts_weights_and_stays_close_to_fp32(fixture_dir, reference):
    bundle = load_acestep(fixture_dir)  # default dtype: bf16, as the checkpoint is stored
    assert {p.dtype for p in bundle.transformer.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        inputs = {k: v.to(torch.bfloat16) for k, v in decoder_inputs(reference).items()}
        out = bundle.transformer(**inputs).sample.float()
    # bf16 activations: a few bf16 ulps of |v| <= 2.5 (diffusers-parity.md section 4).
    assert (out - reference["decoder.out.velocity"]).abs().max() < 0.1


def test_components_subset_loads_only_what_is_asked(fixture_dir, reference):
    bundle = load_acestep(fixture_dir, dtype=torch.float32, components=("transformer",))
    assert bundle.condition_encoder is None and bundle.audio_tokenizer is None
    # The null embedding is still there for CFG dropout, equal to the encoder's copy.
    full = load_acestep(fixture_dir, dtype=torch.float32, components=("condition_encoder",))
    assert torch.equal(bundle.null_condition_emb, full.null_condition_emb)
    assert torch.equal(bundle.silence_latent, full.silence_latent)
