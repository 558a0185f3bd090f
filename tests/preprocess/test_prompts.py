"""The prompts match the official inference templates byte for byte."""

from acestep.preprocess.prompts import caption_prompt, format_metas, lyric_prompt


def test_caption_prompt_template():
    prompt = caption_prompt("mystyle, warm jazz ballad", bpm=92.0, timesignature="4", keyscale="C major",
                            duration_seconds=30.96)
    assert prompt == (
        "# Instruction\nFill the audio semantic mask based on the given conditions:\n\n"
        "# Caption\nmystyle, warm jazz ballad\n\n"
        "# Metas\n- bpm: 92\n- timesignature: 4\n- keyscale: C major\n- duration: 30 seconds\n<|endoftext|>\n"
    )


def test_unknown_metas_are_na():
    assert format_metas(None, "", None, 12.0) == (
        "- bpm: N/A\n- timesignature: N/A\n- keyscale: N/A\n- duration: 12 seconds\n")
    assert "- bpm: 120.5\n" in format_metas(120.5, "4", "A minor", 1)


def test_lyric_prompt_keeps_header_and_terminator():
    assert lyric_prompt("[Verse]\nhello\n", "en", instrumental=False) == (
        "# Languages\nen\n\n# Lyric\n[Verse]\nhello<|endoftext|>")


def test_instrumental_or_empty_lyrics_use_the_instrumental_marker():
    assert lyric_prompt("la la", "en", instrumental=True).endswith("# Lyric\n[Instrumental]<|endoftext|>")
    assert lyric_prompt("  ", "", instrumental=False) == "# Languages\nunknown\n\n# Lyric\n[Instrumental]<|endoftext|>"
