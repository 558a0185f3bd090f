"""The ACE-Step 5 Hz LM's "understand" task: the prompt that asks it to describe audio codes, and
a tolerant reader of what it answers.

The format is the official one (ace-step/ACE-Step-1.5, `acestep/constants.py` and
`acestep/llm_inference.py`: `build_formatted_prompt_for_understanding`, `parse_lm_output`,
`_extract_lyrics_from_output`):

- a chat of two messages through the LM tokenizer's own chat template, with the generation prompt:
  system `"# Instruction\\n" + UNDERSTAND_INSTRUCTION + "\\n\\n"`, user the codes written as
  `<|audio_code_N|>` tokens, one per 5 Hz frame, with nothing between them;
- the answer is a `<think>` block of `key: value` lines (bpm, caption, duration, genres,
  keyscale, language, timesignature; YAML-style indented continuation lines for long captions),
  then `</think>` and the lyrics, sometimes under a `# Lyric` header, `[Instrumental]` for none.

`parse_lm_output` never raises: unreadable text comes back in `raw` with `parsed` false, and
values the model got wrong (a bpm of "fast", an unknown language) are dropped with a note.
"""

from __future__ import annotations

import re

from acestep.captioning.labels import Labels
from acestep.dataset.languages import UNKNOWN_LANGUAGE
from acestep.dataset.values import (
    normalize_keyscale,
    normalize_timesignature,
    parse_bpm,
    parse_metadata_language,
)

UNDERSTAND_INSTRUCTION = "Understand the given musical conditions and describe the audio semantics accordingly:"
SYSTEM_PROMPT = f"# Instruction\n{UNDERSTAND_INSTRUCTION}\n\n"
CODEBOOK_SIZE = 64_000  # FSQ levels [8, 8, 8, 5, 5, 5]
THINK_START, THINK_END = "<think>", "</think>"
END_TOKENS = ("<|im_end|>", "<|endoftext|>")
INSTRUMENTAL_MARKERS = {"[instrumental]", "instrumental", "[inst]", "[instrumental music]"}

_CODE_TOKEN = re.compile(r"<\|audio_code_(\d+)\|>")
_LYRIC_HEADER = re.compile(r"^#\s*lyrics?\s*\n", re.IGNORECASE)
_LANGUAGE_HEADER = re.compile(r"^#\s*languages?\s*\n[^\n]*\n+", re.IGNORECASE)
_KEYSCALE = re.compile(r"^[A-G][#b♯♭]? (major|minor)$")
_TIMESIGNATURE = re.compile(r"^\d{1,2}(/\d{1,2})?$")
# Field names as the model writes them, and the spellings other tools use, -> ours.
_FIELDS = {
    "bpm": "bpm", "tempo": "bpm",
    "caption": "caption", "description": "caption",
    "duration": "duration",
    "genres": "genre", "genre": "genre",
    "keyscale": "keyscale", "key": "keyscale", "key_scale": "keyscale",
    "language": "language", "vocal_language": "language",
    "timesignature": "timesignature", "time_signature": "timesignature",
}


def audio_code_token(code: int) -> str:
    return f"<|audio_code_{code}|>"


def codes_text(codes: list[int]) -> str:
    """The codes as the LM reads them: `<|audio_code_N|>` tokens back to back. Raises ValueError
    for a code outside 0..63999 (not an output of the ACE-Step audio tokenizer)."""
    bad = [code for code in codes if not 0 <= int(code) < CODEBOOK_SIZE]
    if bad:
        raise ValueError(f"audio codes must be in 0..{CODEBOOK_SIZE - 1}, found {bad[:5]}")
    return "".join(audio_code_token(int(code)) for code in codes)


def understanding_messages(codes: list[int]) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": codes_text(codes)}]


def build_understanding_prompt(codes: list[int], tokenizer) -> str:
    """The official understand prompt for these 5 Hz codes, as text through `tokenizer`'s chat
    template (with the assistant's generation prompt). Raises ValueError for empty codes or a
    code out of range, and `CheckpointError` when the tokenizer has no chat template."""
    from acestep.errors import CheckpointError

    if not codes:
        raise ValueError("no audio codes: the audio gave no 5 Hz frames")
    if not getattr(tokenizer, "chat_template", None):
        folder = getattr(tokenizer, "name_or_path", "") or "the LM folder"
        raise CheckpointError(
            f"The tokenizer in {folder} has no chat template (chat_template.jinja or 'chat_template' in "
            "tokenizer_config.json); the official 5Hz LM ships one. Download the model again."
        )
    return tokenizer.apply_chat_template(understanding_messages(codes), tokenize=False, add_generation_prompt=True)


def codes_in(text: str) -> list[int]:
    """The code numbers of every `<|audio_code_N|>` token in `text`, in order."""
    return [int(number) for number in _CODE_TOKEN.findall(text)]


# --- reading the answer ---


def _cut_at_end_token(text: str) -> str:
    positions = [text.find(token) for token in END_TOKENS if token in text]
    return text[: min(positions)] if positions else text


def _split_think(text: str) -> tuple[str | None, str | None, list[str]]:
    """(metadata text, lyrics text, notes). None where the part is absent."""
    notes = []
    start, end = text.find(THINK_START), text.find(THINK_END)
    if start >= 0 and (end < 0 or end < start):
        end = text.find(THINK_END, start)
    if start >= 0 and end >= 0:
        return text[start + len(THINK_START): end], text[end + len(THINK_END):], notes
    if start >= 0:
        metadata = text[start + len(THINK_START):]
        notes.append("the LM output ends inside its <think> block (truncated: raise max_new_tokens)")
        if not metadata.endswith("\n"):  # the last line was cut mid-value: "bpm: 12" of 128
            metadata = metadata[: metadata.rfind("\n") + 1]
            notes.append("its unfinished last line was dropped")
        return metadata, None, notes
    if end >= 0:
        notes.append("the LM output has </think> without <think>")
        return text[:end], text[end + len(THINK_END):], notes
    # No tags: metadata lines may still stand at the start, before any audio codes.
    return text.split("<|audio_code_")[0], None, notes


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1].replace('\\"', '"')
    return value


def read_fields(metadata: str) -> dict[str, str]:
    """`key: value` lines -> {our field name: value}. A line indented deeper than its key line
    continues the value (YAML's wrapped scalars, as the official parser reads them); unknown keys
    and lines without a colon are skipped. Continued values are joined with single spaces."""
    fields: dict[str, list[str]] = {}
    current, key_indent = None, 0
    for line in metadata.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("<"):
            continue
        indent = len(line) - len(line.lstrip())
        if current is not None and indent > key_indent:
            fields[current].append(stripped)
            continue
        key, colon, value = stripped.partition(":")
        current = _FIELDS.get(key.lstrip("-* ").strip().casefold()) if colon else None
        key_indent = indent
        if current is not None:
            first = value.strip()
            fields[current] = [] if first in (">", ">-", "|", "|-") else [first]
    return {name: _unquote(" ".join(part for part in parts if part)) for name, parts in fields.items()}


def _set_checked(labels: Labels, name: str, raw: str, read, notes: list[str]) -> None:
    try:
        value = read(raw)
    except ValueError as exc:
        notes.append(f"LM {name} {raw!r} ignored: {exc}")
        return
    if value not in (None, ""):
        setattr(labels, name, value)


def _keyscale(raw: str) -> str:
    value = normalize_keyscale(raw)
    if not value:
        return ""
    if not _KEYSCALE.match(value):
        raise ValueError("not a key such as 'A minor'")
    return value


def _timesignature(raw: str) -> str:
    value = normalize_timesignature(raw)
    if value and not _TIMESIGNATURE.match(value):
        raise ValueError("not a time signature such as '4' or '6/8'")
    return value


def _language(raw: str) -> str:
    code = parse_metadata_language(raw) or ""
    return "" if code == UNKNOWN_LANGUAGE else code  # "unknown" says nothing


def _apply_fields(labels: Labels, fields: dict[str, str], notes: list[str]) -> None:
    labels.caption = fields.get("caption", "")
    labels.genre = fields.get("genre", "")
    readers = {"bpm": parse_bpm, "keyscale": _keyscale, "timesignature": _timesignature, "language": _language}
    for name, read in readers.items():
        if fields.get(name):
            _set_checked(labels, name, fields[name], read, notes)


def _apply_lyrics(labels: Labels, lyrics: str, notes: list[str]) -> None:
    text = _LANGUAGE_HEADER.sub("", lyrics.strip())
    text = _LYRIC_HEADER.sub("", text).strip()
    if _CODE_TOKEN.search(text):
        notes.append("the LM wrote audio codes after its description; they were dropped")
        text = _CODE_TOKEN.sub("", text).strip()
    if text.casefold() in INSTRUMENTAL_MARKERS:
        labels.instrumental, labels.lyrics = True, ""
    elif text:
        labels.instrumental, labels.lyrics = False, text


def parse_lm_output(text: str) -> Labels:
    """The 5 Hz LM's answer -> `Labels(source="lm")` with `raw` the text as given.

    Tolerant: missing fields stay empty, a missing `</think>` (truncated output) keeps what was
    written, wrong values are dropped with a note. `parsed` is false when nothing at all could be
    read (no field, no lyrics). Never raises.
    """
    text = text if isinstance(text, str) else str(text)
    labels = Labels(raw=text, source="lm")
    body = _cut_at_end_token(text)
    metadata, lyrics, notes = _split_think(body)
    fields = read_fields(metadata or "")
    _apply_fields(labels, fields, notes)
    if lyrics:
        _apply_lyrics(labels, lyrics, notes)
    labels.notes = notes
    labels.parsed = bool(fields) or bool(labels.lyrics) or labels.instrumental is not None
    if not labels.parsed:
        labels.notes.append("the LM output holds no <think> fields and no lyrics; kept raw")
    return labels
