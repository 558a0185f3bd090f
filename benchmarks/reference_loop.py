"""A straightforward LoRA training loop written the way the official ACE-Step 1.5 trainer writes it
(ace-step/ACE-Step-1.5 `acestep/training/trainer.py`, Feb 2026: `PreprocessedLoRAModule.training_step`
and `LoRATrainer._train_with_fabric`), the baseline our trainer's speed is compared with.

Per micro-batch, as there:
- the batch comes from a DataLoader over the tensors folder, padded to its longest item, stored in
  the model's dtype, with the context latents in the batch, and is moved to the device;
- noise `randn_like` the latents, then t drawn uniformly from the 8 turbo shift-3 timesteps held in a
  tensor of the model's dtype (bf16 on a GPU), r = t; x_t = t·noise + (1 − t)·x0 in that dtype;
- the decoder's prediction against noise − x0 by `F.mse_loss` over every frame, padding included,
  then cast to fp32; no CFG dropout;
- `loss.item()` into a list of losses, `fabric.backward(loss / accumulation)`, and `.item()` again
  into the accumulated loss: two host syncs per micro-batch;
- after `accumulation` micro-batches: `fabric.clip_gradients` (which raises on a non-finite norm,
  another sync), fused AdamW, warm-up then cosine-with-restarts schedule, `zero_grad`;
- no torch.compile (a compiled model runs eagerly here).
Differences that change no work: the official decoder also takes `attention_mask` and
`encoder_attention_mask` and ignores both (diffusers' transformer has no such arguments); the
official trainer casts the whole model, LoRA included, to bf16, while here the LoRA weights stay
fp32 as the trainer keeps them, since both loops train the same model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LinearLR, SequentialLR

from acestep.training.data import TrainingBatch, collate
from acestep.training.objective import TURBO_SHIFT3_TIMESTEPS, context_latents
from acestep.training.session import TrainingSession


def official_batch(batch: TrainingBatch, silence_latent: torch.Tensor, dtype: torch.dtype) -> dict:
    """A padded batch as the official data module gives it: tensors in the preprocessing dtype,
    the frame mask as `attention_mask`, and the context latents [silence ‖ ones] of every frame."""
    frames, size = batch.target_latents.shape[1], batch.target_latents.shape[0]
    return {"target_latents": batch.target_latents.to(dtype), "attention_mask": batch.frame_mask.to(dtype),
            "encoder_hidden_states": batch.encoder_hidden_states.to(dtype),
            "encoder_attention_mask": batch.encoder_mask.to(dtype),
            "context_latents": context_latents(silence_latent, frames, size).to(dtype)}


def reference_draws(x0: torch.Tensor, table: torch.Tensor, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, noise) as the official step draws them: noise like x0 (its dtype), then t from `table`
    (its dtype: the model's, bf16 on a GPU) at uniformly random indices."""
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    index = torch.randint(0, table.shape[0], (x0.shape[0],), generator=generator, device=table.device)
    return table[index], noise


def reference_loss(model, inputs: dict, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The official flow-matching loss at given draws: MSE of the prediction against noise − x0
    over all frames and channels, padding included, as an fp32 scalar."""
    x0 = inputs["target_latents"]
    t_ = t.unsqueeze(-1).unsqueeze(-1)
    xt = t_ * noise + (1.0 - t_) * x0
    prediction = model(hidden_states=xt, timestep=t, timestep_r=t,
                       encoder_hidden_states=inputs["encoder_hidden_states"],
                       context_latents=inputs["context_latents"]).sample
    return F.mse_loss(prediction, noise - x0).float()


class ReferenceLoop:
    """The official loop on the session's model and Fabric, with its own optimizer and schedule."""

    def __init__(self, session: TrainingSession):
        o = session.config.optimizer
        self.fabric, self.model, self.dtype = session.fabric, session.model, session.model_dtype
        self.accumulation, self.max_norm = o.gradient_accumulation, o.grad_clip or 1.0
        device = self.fabric.device
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay,
                                      fused=True if device.type == "cuda" else None)
        warmup = max(1, o.warmup_steps)
        self.scheduler = SequentialLR(optimizer, [
            LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup),
            CosineAnnealingWarmRestarts(optimizer, T_0=10**6, T_mult=1, eta_min=o.lr * 0.01)], milestones=[warmup])
        self.optimizer = self.fabric.setup_optimizers(optimizer)
        self.table = torch.tensor(TURBO_SHIFT3_TIMESTEPS, device=device, dtype=self.dtype)
        self.silence = session.silence_latent.cpu()
        self.losses: list[float] = []  # the official `training_losses`: one host float per micro-batch
        self.accumulated, self.micro_steps = 0.0, 0

    def collate(self, items: list[dict]) -> dict:
        return official_batch(collate(items), self.silence, self.dtype)

    def step(self, batch: dict) -> None:
        """One micro-batch: forward, backward, and the optimizer step when the group is complete."""
        device = self.fabric.device
        with self.fabric.autocast():
            inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            t, noise = reference_draws(inputs["target_latents"], self.table)
            loss = reference_loss(self.model, inputs, t, noise)
        self.losses.append(loss.item())
        loss = loss / self.accumulation
        self.fabric.backward(loss)
        self.accumulated += loss.item()
        self.micro_steps += 1
        if self.micro_steps >= self.accumulation:
            self.fabric.clip_gradients(self.model, self.optimizer, max_norm=self.max_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
            self.accumulated, self.micro_steps = 0.0, 0
