"""acestep.captioning.genres: the shipped vocabulary file, genre-tag normalisation and the loader's
errors on malformed vocabulary files."""

import pytest

from acestep.captioning.genres import (
    VOCABULARY_PATH,
    VocabularyError,
    clean_term,
    is_known_genre,
    load_vocabulary,
    matching_key,
    normalize_genres,
    parse_vocabulary,
)

# Genre fields as captioners, taggers and people write them, with what we make of them.
CORPUS = {
    "Hip-Hop": "hip hop",
    "hip hop": "hip hop",
    "HipHop": "hip hop",
    "hip_hop, HIP HOP": "hip hop",
    "lofi": "lo-fi",
    "Lo-Fi": "lo-fi",
    "lo fi hip hop": "lo-fi hip hop",
    "drum n bass": "drum and bass",
    "DnB": "drum and bass",
    "Drum & Bass; drum-and-bass": "drum and bass",
    "R&B/Soul": "r&b, soul",
    "rnb, RnB, rhythm and blues": "r&b",
    "Pop and Rock": "pop, rock",
    "rock & roll and pop": "rock and roll, pop",
    "drum and bass and jazz": "drum and bass, jazz",
    "EDM / electronic dance music / House": "edm, house",
    "K-Pop | kpop | J-POP": "k-pop, j-pop",
    "Synthpop, synth pop, SYNTH-POP": "synth-pop",
    "Reggaetón, reggaeton": "reggaeton",
    "Nu-Metal, nü metal": "nu metal",
    "jazz, Jazz, JAZZ": "jazz",
    "  [Space  Disco] , 'Nu Jazz' ": "space disco, nu jazz",
    "Tropical House\nDeep House": "tropical house, deep house",
    "Glitchy Bedroom Folk, pop": "glitchy bedroom folk, pop",
    "prog; prog rock; progressive rock": "progressive rock",
    "": "",
    " , ; / ": "",
}


@pytest.mark.parametrize(("text", "expected"), list(CORPUS.items()))
def test_normalize_genres(text, expected):
    assert normalize_genres(text) == expected


def test_normalizing_twice_changes_nothing():
    for text in CORPUS:
        once = normalize_genres(text)
        assert normalize_genres(once) == once


def test_unknown_terms_are_kept_cleaned_never_dropped():
    text = "Hyper-Baroque Shanty Core, Lo-Fi, ¡Cumbia Villera!, 90s Eurodance"
    assert normalize_genres(text) == "hyper-baroque shanty core, lo-fi, cumbia villera, 90s eurodance"
    assert not is_known_genre("hyper-baroque shanty core")
    assert clean_term('  "Dark   Cabaret"  ') == "dark cabaret"


def test_the_shipped_vocabulary():
    vocabulary = load_vocabulary()
    lines = VOCABULARY_PATH.read_text(encoding="utf-8").splitlines()
    assert 300 <= len(lines) <= 600
    assert 350 <= len(vocabulary.terms) <= 450 and 100 <= len(vocabulary.aliases) <= 160
    assert all(term == clean_term(term) for term in vocabulary.terms)
    assert len({matching_key(term) for term in vocabulary.terms}) == len(vocabulary.terms)
    for term in ("pop", "rock", "hip hop", "r&b", "lo-fi", "drum and bass", "edm", "k-pop", "bossa nova", "afrobeats"):
        assert term in vocabulary.terms
    assert set(vocabulary.aliases.values()) <= set(vocabulary.terms)
    assert load_vocabulary() is vocabulary  # read once


def test_is_known_genre():
    assert is_known_genre("Hip-Hop") and is_known_genre("DnB") and is_known_genre("Lo Fi")
    assert is_known_genre("afrobeat") and is_known_genre("afrobeats")  # Fela's genre and today's are both terms
    assert load_vocabulary().canonical("Afro Beats") == "afrobeats"
    assert not is_known_genre("hip hop, jazz")  # a list is not one term
    assert not is_known_genre("") and not is_known_genre("garage")  # ambiguous words get no alias


def test_matching_key():
    assert matching_key("Drum-n-Bass") == "drumnbass"
    assert matching_key("R&B") == "r&b"
    assert matching_key("Forró") == matching_key("forro") == "forro"
    assert matching_key("rock'n'roll") == "rocknroll"


def test_a_custom_vocabulary_is_used(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# ours\nspace disco\ncosmic disco -> space disco\n", encoding="utf-8")
    vocabulary = load_vocabulary(path)
    assert vocabulary.terms == ("space disco",) and vocabulary.aliases == {"cosmic disco": "space disco"}
    assert normalize_genres("Cosmic-Disco / hip-hop", vocabulary) == "space disco, hip-hop"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pop\nrock\nPop Rock\n", r"mine\.txt:3: canonical term 'Pop Rock' must be lower case .* write 'pop rock'"),
        ("hip hop\nhip-hop\n", r"mine\.txt:2: 'hip-hop' meets 'hip hop' under matching; keep one"),
        ("pop\nsynthpop -> synth-pop\n", r"mine\.txt:2: alias target 'synth-pop' is not a canonical term; add it"),
        ("lo-fi\nlofi -> lo-fi\n", r"mine\.txt:2: alias 'lofi' already meets 'lo-fi' under matching; delete the line"),
        ("r&b\nrnb -> r&b\nr n b -> r&b\n", r"mine\.txt:3: alias 'r n b' already meets 'r&b'"),
        ("pop\na -> b -> pop\n", r"mine\.txt:2: 'a -> b -> pop' is neither 'term' nor 'alias -> term'"),
        ("pop\n -> pop\n", r"mine\.txt:2: .* is neither 'term' nor 'alias -> term'"),
        ("pop\n-- -> pop\n", r"mine\.txt:2: '--' has no letters or digits to match"),
    ],
)
def test_malformed_vocabulary_files_are_refused_with_file_and_line(tmp_path, text, message):
    path = tmp_path / "mine.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(VocabularyError, match=message):
        parse_vocabulary(path.read_text(encoding="utf-8"), path)


def test_a_missing_vocabulary_file_is_named(tmp_path):
    with pytest.raises(VocabularyError, match=r"missing\.txt: cannot read the genre vocabulary"):
        load_vocabulary(tmp_path / "missing.txt")
    assert issubclass(VocabularyError, ValueError)
