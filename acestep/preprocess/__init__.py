"""Preprocessing: dataset JSON -> a folder of training tensors.

`pipeline.py` runs it (torch), `encode.py` encodes, `prompts.py` writes the text prompts,
`tensors.py` writes and reads the per-sample tensors, and `manifest.py` (no torch) the folder's
manifest. Nothing is imported here, so `acestep.preprocess.manifest` stays torch-free.
"""
