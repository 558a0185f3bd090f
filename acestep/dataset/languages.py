"""The vocal languages ACE-Step 1.5 knows, as the codes the model was trained with.

`VALID_LANGUAGES` is the official list (ace-step/ACE-Step-1.5 `acestep/constants.py`,
51 codes including "unknown"); the lyrics prompt writes the code under `# Languages`, so a
dataset must hold exactly these codes. Sidecars and CSV files written by people may say
"English" or "EN": `parse_language` turns those into codes and refuses anything else.
"""

from __future__ import annotations

UNKNOWN_LANGUAGE = "unknown"

# Code -> English name, in the order of the official list.
LANGUAGE_NAMES: dict[str, str] = {
    "ar": "Arabic", "az": "Azerbaijani", "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan",
    "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "fa": "Persian", "fi": "Finnish", "fr": "French", "he": "Hebrew",
    "hi": "Hindi", "hr": "Croatian", "ht": "Haitian Creole", "hu": "Hungarian", "id": "Indonesian",
    "is": "Icelandic", "it": "Italian", "ja": "Japanese", "ko": "Korean", "la": "Latin",
    "lt": "Lithuanian", "ms": "Malay", "ne": "Nepali", "nl": "Dutch", "no": "Norwegian",
    "pa": "Punjabi", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian",
    "sa": "Sanskrit", "sk": "Slovak", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili",
    "ta": "Tamil", "te": "Telugu", "th": "Thai", "tl": "Tagalog", "tr": "Turkish",
    "uk": "Ukrainian", "ur": "Urdu", "vi": "Vietnamese", "yue": "Cantonese", "zh": "Chinese",
    UNKNOWN_LANGUAGE: "Unknown",
}

VALID_LANGUAGES: tuple[str, ...] = tuple(LANGUAGE_NAMES)

_BY_NAME = {name.casefold(): code for code, name in LANGUAGE_NAMES.items()}


def parse_language(value: str) -> str:
    """A language code from a code or an English name, case-insensitive ("EN", "english" -> "en").

    An empty value is "unknown". Raises ValueError (message: what was found and what is
    accepted) for anything else; callers add the file and field to it.
    """
    text = value.strip().casefold()
    if not text:
        return UNKNOWN_LANGUAGE
    if text in LANGUAGE_NAMES:
        return text
    if text in _BY_NAME:
        return _BY_NAME[text]
    raise ValueError(
        f"language must be one of the ACE-Step codes ({', '.join(VALID_LANGUAGES)}) "
        f"or their English names, found {value!r}"
    )
