"""Settings every test needs: no network, no telemetry. Nothing model-specific lives here."""

import os

# Tests never download: a hub call must fail at once, not wait on the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
