"""The timbre encoder as the official checkpoints run it.

diffusers' `AceStepTimbreEncoder` matches the 2B code, where the line that prepends
`special_token` is commented out. The XL code prepends it (a CLS token) and reads the output at
that position; without it the XL timbre embedding is off by 4.3 on the tiny model
(`shared/reference/diffusers-parity.md` section 7). diffusers' condition encoder also does not
pass `layer_types` on to the timbre encoder; we build it ourselves with the checkpoint's list.
"""

from __future__ import annotations

import torch
from diffusers.models.transformers.ace_step_transformer import (
    _ace_step_rotary_freqs,
    _create_4d_mask,
    _is_flash_attention_backend,
)
from diffusers.pipelines.ace_step.modeling_ace_step import AceStepTimbreEncoder


class TimbreEncoder(AceStepTimbreEncoder):
    """`AceStepTimbreEncoder` with the XL special-token prepend as a switch.

    Same parameters and state-dict keys as the diffusers module; with
    `prepend_special_token=False` it is exactly the diffusers forward.
    """

    prepend_special_token: bool = False

    def forward(self, refer_audio_acoustic_hidden_states_packed: torch.Tensor,
                refer_audio_order_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.prepend_special_token:
            return super().forward(refer_audio_acoustic_hidden_states_packed, refer_audio_order_mask)
        embedded = self.embed_tokens(refer_audio_acoustic_hidden_states_packed)
        token = self.special_token.to(embedded.dtype).expand(embedded.shape[0], 1, -1)
        hidden_states = torch.cat([token, embedded], dim=1)
        seq_len, dtype, device = hidden_states.shape[1], hidden_states.dtype, hidden_states.device
        position_embeddings = _ace_step_rotary_freqs(seq_len, self.head_dim, self.rope_theta, device, dtype)
        band = None
        if not _is_flash_attention_backend(self.layers[0].self_attn.processor):
            band = _create_4d_mask(seq_len=seq_len, dtype=dtype, device=device, sliding_window=self.sliding_window,
                                   is_sliding_window=True, is_causal=False)
        for layer_type, layer in zip(self._layer_types[: len(self.layers)], self.layers, strict=True):
            mask = band if layer_type == "sliding_attention" else None
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(layer, hidden_states, position_embeddings, mask)
            else:
                hidden_states = layer(hidden_states=hidden_states, position_embeddings=position_embeddings,
                                      attention_mask=mask)
        pooled = self.norm(hidden_states)[:, 0, :]  # the special token's position
        return self.unpack_timbre_embeddings(pooled, refer_audio_order_mask)
