"""Audio previews: sample music from a transformer (with its adapter at chosen strengths) and write
wav files and spectrograms. `sampler` holds the schedules and the Euler sampler, `strength` the
adapter strength switch, `preview` the renderer, `render` the files, `training_hook` the previews
during training, `cli` the `preview` command."""

from acestep.inference.preview import PreviewRenderer, PreviewRequest
from acestep.inference.render import write_preview
from acestep.inference.sampler import PreviewError, sample_latents, timestep_schedule
from acestep.inference.strength import adapter_strength

__all__ = ["PreviewError", "PreviewRenderer", "PreviewRequest", "adapter_strength", "sample_latents",
           "timestep_schedule", "write_preview"]
