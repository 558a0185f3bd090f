"""The text the encoders see: the caption prompt and the lyrics prompt, as ACE-Step 1.5 formats
them at inference (`shared/reference/acestep-model.md` section 4.2-4.3).

Where the official trainers differ from inference, we follow inference, because that is what the
LoRA will be used with: the lyrics keep their `# Languages` header and terminator (the newer
upstream trainer fixed the same mismatch), and nothing is padded to a fixed length.
"""

from __future__ import annotations

from dataclasses import dataclass

SFT_GEN_PROMPT = "# Instruction\n{instruction}\n\n# Caption\n{caption}\n\n# Metas\n{metas}<|endoftext|>\n"
LYRIC_PROMPT = "# Languages\n{language}\n\n# Lyric\n{lyrics}<|endoftext|>"
TEXT2MUSIC_INSTRUCTION = "Fill the audio semantic mask based on the given conditions:"
INSTRUMENTAL_LYRICS = "[Instrumental]"
TEXT_MAX_TOKENS = 256
LYRIC_MAX_TOKENS = 2048


@dataclass(frozen=True)
class SamplePrompts:
    """Both prompts of one sample, ready for the tokenizer."""

    caption_prompt: str
    lyric_prompt: str


def _value(value) -> str:
    if value is None or value == "":
        return "N/A"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def format_metas(bpm, timesignature, keyscale, duration_seconds: float) -> str:
    """The `# Metas` block: unknown values are written `N/A`, the duration in whole seconds."""
    return (f"- bpm: {_value(bpm)}\n- timesignature: {_value(timesignature)}\n"
            f"- keyscale: {_value(keyscale)}\n- duration: {int(duration_seconds)} seconds\n")


def caption_prompt(caption: str, bpm, timesignature, keyscale, duration_seconds: float,
                   instruction: str = TEXT2MUSIC_INSTRUCTION) -> str:
    """The prompt encoded by the full Qwen3 text encoder."""
    metas = format_metas(bpm, timesignature, keyscale, duration_seconds)
    return SFT_GEN_PROMPT.format(instruction=instruction, caption=caption.strip(), metas=metas)


def lyric_prompt(lyrics: str, language: str, instrumental: bool) -> str:
    """The prompt whose token embeddings feed the lyric encoder; instrumental tracks (or empty
    lyrics) use `[Instrumental]`, as at inference."""
    text = lyrics.strip()
    if instrumental or not text:
        text = INSTRUMENTAL_LYRICS
    return LYRIC_PROMPT.format(language=language or "unknown", lyrics=text)
