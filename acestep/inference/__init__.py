"""Audio previews: sample music from a transformer (with its adapter at chosen strengths) and write
wav files and spectrograms. `sampler` holds the schedules and the Euler sampler, `strength` the
adapter strength switch, `preview` the renderer, `render` the files, `effect` what a render's
figures say (the adapter effect, the latent distance to the songs), `training_hook` the previews
during training, `cli` the `preview` command.

Importing the package is cheap (no torch) so that the CLI can build its options quickly; the
public names below load their modules on first use.
"""

GUIDANCE_METHODS = ("apg", "cfg")

_LAZY = {"PreviewRenderer": "preview", "PreviewRequest": "preview", "write_preview": "render",
         "sample_latents": "sampler", "timestep_schedule": "sampler", "adapter_strength": "strength"}

__all__ = ["GUIDANCE_METHODS", "PreviewError", *_LAZY]


def __getattr__(name):
    if name == "PreviewError":
        from acestep.errors import PreviewError

        return PreviewError
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"acestep.inference.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'acestep.inference' has no attribute {name!r}")
