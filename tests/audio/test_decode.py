"""acestep.audio.decode on whole and truncated files of each format, encoded by ffmpeg from a
recorded loop: a file that decodes short of the length its headers state is refused, naming both
lengths; whole files (codec delay and padding included) and MP3s whose header length is only an
estimate still load."""

import re

import numpy as np
import pytest
import soundfile as sf

from acestep.audio import load_audio, probe_audio
from acestep.audio.decode import check_file, decode_samples
from acestep.errors import AudioError

from .media import ffmpeg_encode, truncated_copy

WHOLE_FILES = {
    "pcm.wav": ["-c:a", "pcm_s16le"],
    "lossless.flac": ["-c:a", "flac"],
    "vorbis.ogg": ["-c:a", "libvorbis"],
    "opus.opus": ["-c:a", "libopus"],
    "cbr.mp3": ["-c:a", "libmp3lame", "-b:a", "192k"],
    "vbr.mp3": ["-c:a", "libmp3lame", "-q:a", "2"],
    "aac.m4a": ["-c:a", "aac"],
    "alac.m4a": ["-c:a", "alac"],
}
# The three ways a cut file reaches a decoder: libsndfile reads a short MP3 without complaint;
# it loses sync in a cut FLAC, so ffmpeg decodes it; ffmpeg alone reads m4a.
TRUNCATED_FILES = {
    "halfdownloaded.mp3": ["-c:a", "libmp3lame", "-b:a", "192k"],
    "cut.flac": ["-c:a", "flac"],
    "cut.m4a": ["-c:a", "aac", "-movflags", "+faststart"],  # index first, as streamed files have it
}
TRUNCATED = re.compile(r"is truncated or damaged: its header says (\d+\.\d) s \((\d+) frames\) but only "
                       r"(\d+\.\d) s \((\d+) frames\) decode; re-download or re-export it")


@pytest.mark.parametrize("name", WHOLE_FILES)
def test_whole_files_of_every_format_load_at_their_stated_length(real_loops, tmp_path, name):
    encoded = ffmpeg_encode(real_loops["loop_amen_full"], tmp_path / name, *WHOLE_FILES[name])
    stated = probe_audio(encoded)

    samples, rate = decode_samples(encoded, check_file(encoded))

    assert rate == stated.sample_rate
    assert abs(len(samples) - stated.frames) <= 1024  # an AAC frame of padding at most; the others exact
    assert load_audio(encoded).shape[0] == 2


@pytest.mark.parametrize("name", TRUNCATED_FILES)
def test_a_truncated_file_is_refused_naming_both_lengths_and_the_fix(real_loops, tmp_path, name):
    whole = ffmpeg_encode(real_loops["loop_amen_full"], tmp_path / f"whole_{name}",
                          *TRUNCATED_FILES[name])
    cut = truncated_copy(whole, tmp_path / name, fraction=0.4)
    stated = probe_audio(whole)

    with pytest.raises(AudioError) as raised:
        load_audio(cut)
    assert raised.value.path == cut and str(cut) in str(raised.value)
    found = TRUNCATED.fullmatch(raised.value.reason)
    assert found, raised.value.reason
    assert (found[1], int(found[2])) == (f"{stated.duration:.1f}", stated.frames)
    assert 0.2 * stated.frames < int(found[4]) < 0.6 * stated.frames  # about the 40 % of the bytes kept
    assert found[3] == f"{int(found[4]) / stated.sample_rate:.1f}"

    with pytest.raises(AudioError, match="is truncated"):  # asking for more than is left: still refused
        load_audio(cut, max_seconds=240.0)
    assert load_audio(cut, max_seconds=1.0).shape == (2, 48_000)  # the start is there


def test_an_mp3_whose_header_only_estimates_its_length_is_not_called_truncated(real_loops, tmp_path):
    # Without a Xing/Info frame an MP3's length is guessed from its first frame's bitrate: silence
    # first (a low bitrate) makes the guess far too long, and the whole file decodes "short".
    loop, rate = sf.read(real_loops["loop_amen_full"], dtype="float32", always_2d=True)
    sf.write(tmp_path / "source.wav", np.concatenate([np.zeros((3 * rate, loop.shape[1]), np.float32), loop]), rate)
    mp3 = ffmpeg_encode(tmp_path / "source.wav", tmp_path / "no_xing.mp3",
                        "-c:a", "libmp3lame", "-q:a", "0", "-write_xing", "0")
    estimated = probe_audio(mp3).frames

    samples, _ = decode_samples(mp3, check_file(mp3))

    assert estimated - len(samples) > 2 * rate  # the header's guess is seconds off...
    assert abs(len(samples) - (3 * rate + len(loop))) < 0.1 * rate  # ...the decode is the whole file


def test_an_id3_tag_before_the_first_frame_does_not_hide_the_xing_frame(real_loops, tmp_path):
    whole = ffmpeg_encode(real_loops["loop_amen_full"], tmp_path / "tagged.mp3", "-c:a", "libmp3lame",
                          "-id3v2_version", "3", "-metadata", f"comment={'x' * 5000}")  # tag past the first bytes
    assert whole.read_bytes()[:3] == b"ID3"
    cut = truncated_copy(whole, tmp_path / "tagged_cut.mp3", fraction=0.5)

    with pytest.raises(AudioError, match="is truncated or damaged"):
        load_audio(cut)


def test_an_mp3_whose_header_guesses_too_short_is_decoded_whole_by_ffmpeg(real_loops, tmp_path):
    # A VBR MP3 without a Xing/Info frame whose first frame has a high bitrate: libsndfile takes the
    # guess (about half the loop here) for the length and stops there; ffmpeg reads to the end.
    loop, rate = sf.read(real_loops["loop_amen_full"], dtype="float32", always_2d=True)
    mp3 = ffmpeg_encode(real_loops["loop_amen_full"], tmp_path / "no_xing_vbr.mp3",
                        "-c:a", "libmp3lame", "-q:a", "2", "-write_xing", "0")
    assert probe_audio(mp3).frames < 0.9 * len(loop)  # what libsndfile would have read

    samples, decoded_rate = decode_samples(mp3, check_file(mp3))

    assert decoded_rate == rate and abs(len(samples) - len(loop)) < 0.05 * rate


def test_an_mp3_without_a_length_header_needs_ffmpeg_and_says_so(real_loops, tmp_path, monkeypatch):
    from acestep.audio import ffmpeg

    mp3 = ffmpeg_encode(real_loops["loop_amen_full"], tmp_path / "no_xing.mp3",
                        "-c:a", "libmp3lame", "-b:a", "128k", "-write_xing", "0")
    monkeypatch.setattr(ffmpeg, "available", lambda: False)
    with pytest.raises(AudioError, match=r"MP3 without a length header .* ffmpeg decodes it whole, and was not "
                                         r"found: install ffmpeg"):
        load_audio(mp3)
    whole = ffmpeg_encode(real_loops["loop_amen_full"], tmp_path / "xing.mp3", "-c:a", "libmp3lame")
    assert load_audio(whole).shape[0] == 2  # with its Info frame, libsndfile reads it without ffmpeg
