"""Signal analysis as a labeller: BPM and key from the audio itself, no model.

It runs last by default, fills what the language models left out and cross-checks what they said
(`acestep.captioning.cross_check`), because language models hallucinate tempo and key.
"""

from __future__ import annotations

from pathlib import Path

from acestep.captioning.labels import Labels

ANALYSIS_VERSION = 1  # bump when the estimators change, so cached results are recomputed


class AnalysisLabeller:
    name = "analysis"

    def __init__(self, max_seconds: float = 240.0):
        self.max_seconds = max_seconds

    def fingerprint(self) -> str:
        return f"analysis-v{ANALYSIS_VERSION}-max{self.max_seconds:g}"

    def label(self, path: Path) -> Labels:
        from acestep.audio.analysis import analyze

        result = analyze(path, max_seconds=self.max_seconds)
        notes = []
        if result.bpm is None:
            notes.append(f"{Path(path).name}: no steady beat found")
        return Labels(bpm=round(result.bpm, 1) if result.bpm else None, keyscale=result.keyscale or "",
                      source="analysis", notes=notes)

    def reduce_memory(self) -> bool:
        return False  # no model: nothing to make smaller

    def unload(self) -> None:
        """Nothing is held between files."""
