"""Lyrics in the form ACE-Step trains on: section tags in square brackets on their own lines,
one blank line before each section, no timestamps.

ACE-Step's own examples and the transcriber's model card write lyrics like::

    [Verse 1]
    Walking down the empty street tonight

    [Chorus]
    This is where we belong

`normalize_lyrics` brings transcriber output and lyrics from other tools (LRC files, "Chorus:"
lines, markdown) to that form without touching the sung words.
"""

from __future__ import annotations

import re

# Words a section tag starts with; used to tell "[Chorus]" from "[laughs]" inside a line.
SECTION_WORDS = (
    "intro", "verse", "pre-chorus", "prechorus", "pre chorus", "chorus", "post-chorus", "post chorus", "hook",
    "refrain", "bridge", "interlude", "instrumental", "inst", "solo", "guitar solo", "break", "breakdown", "drop",
    "build", "build-up", "buildup", "outro", "ending", "coda", "spoken", "rap", "fade", "fade out", "fade-out",
    "final chorus", "end", "guitar", "piano", "synth", "drum", "bass", "strings", "sax", "violin",
    "主歌", "副歌", "前奏", "间奏", "尾奏", "桥段", "说唱",
)
_SECTION = "|".join(re.escape(word) for word in sorted(SECTION_WORDS, key=len, reverse=True))
# "[00:12.34]", "[01:02]", "<00:12.345>": LRC line and word timestamps.
_TIMESTAMP = re.compile(r"[\[<]\d{1,3}:\d{2}(?:[.:]\d{1,3})?[\]>]")
# "[ar:Artist]", "[ti:Title]", "[offset:+100]": LRC header lines.
_LRC_HEADER = re.compile(r"^\[(?:ar|ti|al|au|by|re|ve|length|offset|id|tool)\s*:.*\]$", re.IGNORECASE)
_FENCE_LINE = re.compile(r"^```[\w-]*$")
# A line that only names a section: "Chorus:", "**Verse 2**", "(Bridge)", "## Outro", "Verse 1".
_NAME = rf"(?:{_SECTION})(?:\s*\d+)?(?:\s*[-–]\s*[\w .'&/]{{1,30}})?"
_PLAIN = r"(?:verse|chorus|pre-chorus|post-chorus|bridge|intro|outro|hook|refrain|interlude)(?:\s*\d+)?"
_BARE_SECTION = re.compile(
    rf"^(?:#+\s*(?P<a>{_NAME})\s*:?|\*\*(?P<b>{_NAME})\*\*\s*:?|[(（](?P<c>{_NAME})[)）]|(?P<d>{_NAME})\s*:|(?P<e>{_PLAIN}))$",
    re.IGNORECASE,
)
_TAG = re.compile(r"\[[^\[\]\n]{1,60}\]")
_TAG_LINE = re.compile(r"^\[[^\[\]\n]{1,60}\]$")
_KNOWN_TAG = re.compile(rf"^\[\s*(?:{_SECTION})\b", re.IGNORECASE)
_NO_LYRICS = re.compile(
    r"^[\[(（【]?\s*(?:instrumental|no lyrics|no vocals|non-vocal|music only|inst\.?|纯音乐|无歌词|伴奏)"
    r"\s*[\])）】]?\.?$",
    re.IGNORECASE,
)


def normalize_lyrics(text: str) -> str:
    """Lyrics with timestamps and LRC headers removed, every section tag alone on its line
    (bare "Chorus:" lines become "[Chorus]"), a blank line before each tag and none right after
    it, runs of blank lines collapsed, spaces trimmed. The sung lines keep their words."""
    text = (text or "").replace("\r\n", "\n").replace("\r", "\n")
    text = _TIMESTAMP.sub("", text)
    lines: list[str] = []
    for raw_line in text.split("\n"):
        line = raw_line.strip()
        if _FENCE_LINE.match(line) or _LRC_HEADER.match(line):
            continue
        line = line.replace("【", "[").replace("】", "]")
        if line and (bare := _BARE_SECTION.match(line)):
            line = _tidy_tag("[" + next(group for group in bare.groups() if group).strip() + "]")
        lines.extend(_split_tags(line))
    return _layout(lines)


def _split_tags(line: str) -> list[str]:
    """"[Verse 1] Walking down" -> ["[Verse 1]", "Walking down"]; a known section tag inside or
    at the end of a line is split off too, other brackets ("[laughs]") stay in the line."""
    if not line:
        return [""]
    parts: list[str] = []
    rest = line
    leading = re.match(r"^(\[[^\[\]\n]{1,60}\])\s*(.*)$", rest)
    if leading and (not leading.group(2) or _KNOWN_TAG.match(leading.group(1))):
        parts.append(_tidy_tag(leading.group(1)))
        rest = leading.group(2)
    while rest:
        inner = next((m for m in _TAG.finditer(rest) if _KNOWN_TAG.match(m.group(0))), None)
        if inner is None:
            parts.append(rest.strip())
            break
        before = rest[: inner.start()].strip()
        if before:
            parts.append(before)
        parts.append(_tidy_tag(inner.group(0)))
        rest = rest[inner.end():].strip()
    return [part for part in parts if part] or [""]


def _tidy_tag(tag: str) -> str:
    """"[ verse 1 ]" -> "[Verse 1]"; a tag written with capitals is kept as written."""
    inner = " ".join(tag[1:-1].split())
    if inner == inner.lower():
        inner = re.sub(r"(^|[\s-])([a-z])", lambda m: m.group(1) + m.group(2).upper(), inner)
    return f"[{inner}]"


def _layout(lines: list[str]) -> str:
    out: list[str] = []
    for line in lines:
        if _TAG_LINE.match(line):
            while out and out[-1] == "":
                out.pop()
            if out:
                out.append("")
            out.append(line)
        elif line == "":
            if out and out[-1] != "" and not _TAG_LINE.match(out[-1]):
                out.append("")
        else:
            out.append(line)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out)


def section_tags(lyrics: str) -> list[str]:
    """The tag lines of normalized lyrics, in order: ["[Verse 1]", "[Chorus]"]."""
    return [line for line in lyrics.split("\n") if _TAG_LINE.match(line)]


def has_sung_lines(lyrics: str) -> bool:
    """Whether any line of normalized lyrics is not a tag (and not an "instrumental" marker)."""
    return any(line.strip() and not _TAG_LINE.match(line) and not _NO_LYRICS.match(line.strip())
               for line in lyrics.split("\n"))


def is_instrumental_text(lyrics: str) -> bool:
    """True for lyrics that only say there are none: "[Instrumental]", "(instrumental)",
    "No lyrics", "纯音乐"."""
    lines = [line.strip() for line in lyrics.split("\n") if line.strip()]
    return bool(lines) and all(_NO_LYRICS.match(line) for line in lines)
