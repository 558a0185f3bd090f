"""Labelling: AI captioner, lyrics transcriber, 5 Hz LM and signal analysis, and the batch job
that writes their results as sidecars for the dataset builder."""
