"""ACE-Step 1.5 LoRA trainer.

Importing the package is cheap on purpose (no torch, no gradio): `launch.py` and the install
scripts use `acestep.environment` before they know the heavy packages are present.
"""

__version__ = "0.1.0"
