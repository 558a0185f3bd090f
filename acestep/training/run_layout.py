"""The names of what a run folder and an adapter folder hold: the one place they are spelled, for
the trainer that writes them and for the web app and commands that read them (no imports, so the
UI process can take them without torch).

    runs/my-run/config.toml                                  the resolved config of the run
    runs/my-run/events.jsonl                                 one JSON event per line
    runs/my-run/final/, best/                                adapters, written whole
    runs/my-run/checkpoints/step-N/adapter/, COMPLETE        a checkpoint, complete once COMPLETE exists
    runs/my-run/previews/step-N/strength-S.wav, .png         previews during training
    runs/my-run/superseded/after-step-N-TIME/                what a resume from step N set aside: the
                                                             later checkpoints, final/ and best/
    runs/my-run/STOP                                         asks the running run to stop after its step
    runs/my-run/.training.lock                               held by the process that trains the run
"""

CONFIG_FILE = "config.toml"
EVENTS_FILE = "events.jsonl"
CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
ADAPTER_DIR = "adapter"
NAMED_ADAPTERS = ("final", "best")
SUPERSEDED_DIR = "superseded"
PREVIEWS_FOLDER = "previews"
STOP_FILE = "STOP"  # a run stops after its current step when this file appears in its folder
TRAINING_LOCK = ".training.lock"  # locked by the one process that trains the run (acestep.training.run_lock)

# In an adapter folder
TRAINING_METADATA = "training_metadata.json"
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
LOKR_CONFIG = "lokr_config.json"
LOKR_WEIGHTS = "lokr_weights.safetensors"
