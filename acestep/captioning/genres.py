"""Our genre vocabulary (`genres.txt` beside this module) and the normalisation of genre tags.

`normalize_genres("Hip-Hop; LoFi / drum n bass and Jazz")` gives "hip hop, lo-fi, drum and bass,
jazz": the text is split into terms, each known term is replaced by its canonical form, unknown
terms are kept (cleaned: lower case, single spaces, no surrounding quotes or brackets), repeats
are dropped and the rest joined with ", ". No term is dropped but a repeat.

Terms are compared by a matching key that ignores case, accents, spaces, hyphens, underscores,
dots and apostrophes ("Hip-Hop", "hiphop" and "hip hop" share the key "hiphop"). The file format
is described at the top of `genres.txt`.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from acestep.errors import AceStepError

VOCABULARY_PATH = Path(__file__).with_name("genres.txt")

_IGNORED_IN_KEY = re.compile(r"[\s\-_.'’`´]+")
_TERM_SEPARATORS = re.compile(r"[,;/|\n\r\t]+")
_CONJUNCTION = re.compile(r"(\s+(?:and|&|\+)\s+)", re.IGNORECASE)
_WRAPPING = "¡¿\"'“”‘’«»()[]{}<>#*•·-–—:!?"


class VocabularyError(AceStepError, ValueError):
    """The genre vocabulary file is malformed; the message names the file, the line and the fix."""


def matching_key(term: str) -> str:
    """The form terms are compared in: lower case, accents dropped, and no spaces, hyphens,
    underscores, dots or apostrophes ("Drum-n-Bass" -> "drumnbass", "R&B" -> "r&b")."""
    decomposed = unicodedata.normalize("NFKD", term.casefold())
    plain = "".join(char for char in decomposed if not unicodedata.combining(char))
    return _IGNORED_IN_KEY.sub("", plain)


def clean_term(term: str) -> str:
    """A term as we keep it when it is not in the vocabulary: lower case, single spaces, without
    surrounding quotes, brackets or bullet marks ("  [Space  Disco] " -> "space disco")."""
    return " ".join(term.strip().strip(_WRAPPING).split()).casefold()


@dataclass(frozen=True)
class GenreVocabulary:
    """Canonical genre terms in file order and the aliases that lead to them.

    `lookup` maps a matching key (of a canonical term or an alias) to the canonical term.
    """

    terms: tuple[str, ...]
    aliases: dict[str, str]
    lookup: dict[str, str]

    def canonical(self, term: str) -> str | None:
        """The canonical form of `term`, or None when the vocabulary does not know it."""
        return self.lookup.get(matching_key(term))

    def is_known(self, term: str) -> bool:
        """Whether `term` is a canonical term or an alias, under the matching key."""
        return matching_key(term) in self.lookup

    def split_terms(self, text: str) -> list[str]:
        """Terms of a genre text: split at , ; / | and line breaks, then at " and " / " & " / " + "
        unless the words around them form a known term ("drum and bass", "rock & roll")."""
        terms = []
        for chunk in _TERM_SEPARATORS.split(text):
            pieces = _CONJUNCTION.split(chunk)  # words and the conjunctions between them, alternating
            words = len(pieces) // 2 + 1
            start = 0
            while start < words:
                end = next(
                    (
                        end
                        for end in range(words, start + 1, -1)
                        if self.is_known("".join(pieces[2 * start : 2 * end - 1]))
                    ),
                    start + 1,
                )
                terms.append("".join(pieces[2 * start : 2 * end - 1]))
                start = end
        return [term for term in (clean_term(term) for term in terms) if term]

    def normalize(self, text: str) -> str:
        """See `normalize_genres`."""
        result: list[str] = []
        for term in self.split_terms(text):
            normal = self.canonical(term) or term
            if normal not in result:
                result.append(normal)
        return ", ".join(result)


def _parse_line(line: str, path: Path, number: int) -> tuple[str, str | None] | None:
    """(term, None) for a canonical line, (alias, term) for an alias line, None for a comment
    or a blank line. Raises VocabularyError for a malformed line."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    parts = [part.strip() for part in text.split("->")]
    if len(parts) > 2 or not all(parts):
        raise VocabularyError(f"{path}:{number}: {text!r} is neither 'term' nor 'alias -> term'; fix the line")
    term = parts[-1]
    if not matching_key(parts[0]):
        raise VocabularyError(f"{path}:{number}: {parts[0]!r} has no letters or digits to match; fix the line")
    if term != clean_term(term):
        raise VocabularyError(
            f"{path}:{number}: canonical term {term!r} must be lower case with single spaces; "
            f"write {clean_term(term)!r}"
        )
    return (parts[0], term) if len(parts) == 2 else (term, None)


def parse_vocabulary(text: str, path: Path) -> GenreVocabulary:
    """Build a vocabulary from the text of a vocabulary file (`path` names it in errors).

    Raises VocabularyError when a line is malformed, two canonical terms share a matching key,
    an alias leads to a term the file does not list, or an alias meets a canonical term or
    another alias (matching already joins such spellings; delete the line).
    """
    terms: list[str] = []
    lookup: dict[str, str] = {}
    pending: list[tuple[str, str, int]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        parsed = _parse_line(line, path, number)
        if parsed is None:
            continue
        name, target = parsed
        if target is not None:
            pending.append((name, target, number))
            continue
        if (key := matching_key(name)) in lookup:
            raise VocabularyError(f"{path}:{number}: {name!r} meets {lookup[key]!r} under matching; keep one of them")
        lookup[key] = name
        terms.append(name)
    aliases: dict[str, str] = {}
    for alias, target, number in pending:
        if matching_key(target) not in lookup or lookup[matching_key(target)] != target:
            raise VocabularyError(f"{path}:{number}: alias target {target!r} is not a canonical term; add it first")
        if (key := matching_key(alias)) in lookup:
            raise VocabularyError(
                f"{path}:{number}: alias {alias!r} already meets {lookup[key]!r} under matching; delete the line"
            )
        lookup[key] = target
        aliases[alias] = target
    return GenreVocabulary(tuple(terms), aliases, lookup)


@lru_cache(maxsize=4)
def _load(path: Path) -> GenreVocabulary:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise VocabularyError(f"{path}: cannot read the genre vocabulary ({error.strerror or error})") from None
    return parse_vocabulary(text, path)


def load_vocabulary(path: str | Path | None = None) -> GenreVocabulary:
    """The genre vocabulary from `path`, by default `genres.txt` beside this module (read once
    and cached). Raises VocabularyError for an unreadable or malformed file."""
    return _load(Path(path) if path is not None else VOCABULARY_PATH)


def normalize_genres(text: str, vocabulary: GenreVocabulary | None = None) -> str:
    """Genre text in our canonical form: "Hip-Hop; LoFi/DnB" -> "hip hop, lo-fi, drum and bass".

    Splits at commas, semicolons, slashes, bars, line breaks and the words "and" / "&" / "+"
    (not inside a known term such as "drum and bass"); maps known terms and aliases to their
    canonical form; keeps unknown terms, cleaned (`clean_term`); drops repeats, keeping the first;
    joins with ", ". "" for text without terms. Raises VocabularyError if the default vocabulary
    file is broken.
    """
    return (vocabulary or load_vocabulary()).normalize(text)


def is_known_genre(term: str, vocabulary: GenreVocabulary | None = None) -> bool:
    """Whether one term (not a list) is in the vocabulary as a canonical term or an alias."""
    return (vocabulary or load_vocabulary()).is_known(term)
