"""An XL-style tiny checkpoint (encoder narrower than the decoder, q width != hidden) loads and
runs, and its timbre encoder prepends the special token as the upstream XL code does."""

import pytest
import torch

from acestep.models import load_acestep
from acestep.models.tiny import TINY_DIT_CONFIG, write_dit_checkpoint

XL_CONFIG = {
    **TINY_DIT_CONFIG,
    "model_version": "xl_turbo",
    "hidden_size": 96,  # decoder width
    "intermediate_size": 192,
    "num_attention_heads": 8,  # q width 8 x 16 = 128 != hidden 96
    "num_key_value_heads": 2,
    "head_dim": 16,
    "encoder_hidden_size": 64,  # condition encoder narrower than the decoder
    "encoder_intermediate_size": 128,
    "encoder_num_attention_heads": 4,
    "encoder_num_key_value_heads": 2,
}


@pytest.fixture(scope="module")
def xl_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("xl") / "acestep-v15-xl-turbo"
    generator = torch.Generator().manual_seed(7)
    write_dit_checkpoint(folder, XL_CONFIG, generator, torch.randn(1, 300, 64, generator=generator))
    return folder


@pytest.fixture(scope="module")
def xl_bundle(xl_folder):
    return load_acestep(xl_folder, dtype=torch.float32)


def test_xl_variant_and_widths(xl_bundle):
    assert xl_bundle.variant == "xl-turbo"
    assert xl_bundle.config.is_xl
    assert xl_bundle.null_condition_emb.shape == (1, 1, 64)  # encoder width, not decoder width
    transformer = xl_bundle.transformer
    assert transformer.condition_embedder.weight.shape == (96, 64)
    assert transformer.layers[0].self_attn.to_q.weight.shape == (128, 96)
    assert xl_bundle.condition_encoder.text_projector.weight.shape == (64, 32)


@torch.no_grad()
def test_xl_encoder_and_decoder_run_end_to_end(xl_bundle):
    g = torch.Generator().manual_seed(0)
    hidden, mask = xl_bundle.condition_encoder(
        text_hidden_states=torch.randn(2, 5, 32, generator=g), text_attention_mask=torch.ones(2, 5, dtype=torch.long),
        lyric_hidden_states=torch.randn(2, 7, 32, generator=g), lyric_attention_mask=torch.ones(2, 7, dtype=torch.long),
        refer_audio_acoustic_hidden_states_packed=torch.randn(2, 9, 64, generator=g),
        refer_audio_order_mask=torch.tensor([0, 1]))
    assert hidden.shape == (2, 13, 64) and mask.all()
    frames = 11  # odd: padded to the patch size inside and cropped back
    t = torch.tensor([0.8, 0.3])
    velocity = xl_bundle.transformer(
        hidden_states=torch.randn(2, frames, 64, generator=g), timestep=t, timestep_r=t,
        encoder_hidden_states=hidden,
        context_latents=torch.cat([xl_bundle.silence_latent[:, :frames].expand(2, -1, -1),
                                   torch.ones(2, frames, 64)], dim=-1)).sample
    assert velocity.shape == (2, frames, 64)
    assert torch.isfinite(velocity).all()


@torch.no_grad()
def test_xl_timbre_reads_the_prepended_special_token(xl_bundle):
    """Prepending the token equals running the unmodified (2B) path on a sequence whose first
    frame embeds exactly to the special token, then reading position 0."""
    timbre = xl_bundle.condition_encoder.timbre_encoder
    assert timbre.prepend_special_token
    refer = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(3))
    order = torch.tensor([0, 1])
    xl_out, _ = timbre(refer, order)
    # Solve embed_tokens(frame) == special_token for the frame (a square linear map here).
    weight, bias = timbre.embed_tokens.weight.double(), timbre.embed_tokens.bias.double()
    frame = torch.linalg.solve(weight, timbre.special_token[0, 0].double() - bias).float()
    timbre.prepend_special_token = False
    try:
        plain_out, _ = timbre(torch.cat([frame.expand(2, 1, -1), refer], dim=1), order)
    finally:
        timbre.prepend_special_token = True
    assert (xl_out - plain_out).abs().max() < 1e-4
    # and the special token really matters on XL (it is ignored on 2B).
    timbre.special_token.add_(1.0)
    try:
        moved, _ = timbre(refer, order)
    finally:
        timbre.special_token.sub_(1.0)
    assert (moved - xl_out).abs().max() > 1e-3


def test_2b_timbre_ignores_the_special_token(fixture_bundle, reference):
    timbre = fixture_bundle.condition_encoder.timbre_encoder
    assert not timbre.prepend_special_token
    refer = reference["encoder.in.refer_audio_acoustic_hidden_states_packed"]
    order = reference["encoder.in.refer_audio_order_mask"]
    with torch.no_grad():
        before, _ = timbre(refer, order)
        timbre.special_token.add_(1.0)
        try:
            after, _ = timbre(refer, order)
        finally:
            timbre.special_token.sub_(1.0)
    assert torch.equal(before, after)
