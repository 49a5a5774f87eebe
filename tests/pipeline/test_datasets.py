"""End-to-end tests of the demo corpus builders, on tiny subsets written to tmp_path."""
import gzip
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
from PIL import Image
from scipy.io import wavfile

from beam_jobs import datasets

FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")
NOISE_SECONDS = 4
SPEECH_ARGUMENTS = ["--words", "yes,sheila", "--per_word", "2", "--unknown_per_speaker", "1",
                    "--noise_seconds", str(NOISE_SECONDS), "--seed", "3", "--workers", "2"]
# espeak-ng's vowel mnemonics, then its length and variant marks.
VOWEL = "[aeiouAEIOUV03@][aeiouAEIOUV03@:2]*"
CONSONANTS = "[^aeiouAEIOUV03@']*"


def wav_files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*.wav"))}


def read_wav(path: Path) -> np.ndarray:
    rate, samples = wavfile.read(path)
    assert (rate, samples.dtype, samples.ndim) == (16000, np.int16, 1), f"{path} is not 16 kHz int16 mono"
    return samples


def assert_one_second_clips(root: Path, *, words: list[str], speakers: int, unknown_per_speaker: int) -> None:
    """Every speaker says every word and `unknown_per_speaker` UNKNOWN_WORDS, into one-second clips."""
    said = {}
    for name in wav_files(root):
        if name.startswith("_background_noise_/"):
            continue
        assert re.fullmatch(r"[a-z]+/[0-9a-f]{8}_nohash_0\.wav", name), name
        samples = read_wav(root / name)
        assert samples.shape == (16000,), name
        assert np.abs(samples.astype(np.int32)).max() > 1000, f"{name} is near-silent"
        word, speaker = name.split("/")[0], name.split("/")[1][:8]
        said.setdefault(speaker, set()).add(word)
    assert len(said) == speakers
    for speaker, speaker_words in said.items():
        unknown = speaker_words - set(words)
        assert speaker_words >= set(words), f"speaker {speaker} misses words: {set(words) - speaker_words}"
        assert len(unknown) == unknown_per_speaker, f"speaker {speaker} says unknown words {unknown}"
        assert unknown <= set(datasets.UNKNOWN_WORDS), f"speaker {speaker} says {unknown}, not all UNKNOWN_WORDS"


def spectral_slope(samples: np.ndarray, *, low: float, high: float) -> float:
    """The slope, in dB per octave, of a line fitted to the power spectrum between low and high Hz."""
    frequencies, power = scipy.signal.welch(samples.astype(np.float64), fs=16000, nperseg=1024)
    band = (frequencies >= low) & (frequencies <= high)
    return np.polyfit(np.log2(frequencies[band]), 10 * np.log10(power[band]), 1)[0]


def share_at_harmonics(samples: np.ndarray, *, fundamental: float) -> float:
    """The share of the power within 2 Hz of a multiple of `fundamental`."""
    frequencies, power = scipy.signal.periodogram(samples.astype(np.float64), fs=16000)
    distance = np.abs(frequencies - fundamental * np.round(frequencies / fundamental))
    return power[(distance <= 2) & (frequencies > 0)].sum() / power.sum()


@pytest.fixture(scope="module")
def speech_corpora(tmp_path_factory) -> tuple[Path, Path]:
    """Two speech-commands builds with the same tiny SPEECH_ARGUMENTS."""
    roots = tmp_path_factory.mktemp("speech_a"), tmp_path_factory.mktemp("speech_b")
    for root in roots:
        datasets.main(["speech-commands", "--out", str(root), *SPEECH_ARGUMENTS])
    return roots


def test_speech_commands_layout_format_and_determinism(speech_corpora, capsys):
    first, second = speech_corpora
    assert_one_second_clips(first, words=["yes", "sheila"], speakers=2, unknown_per_speaker=1)
    assert wav_files(first) == wav_files(second), "same arguments must give identical bytes, noise included"
    capsys.readouterr()
    datasets.main(["speech-commands", "--out", str(first), *SPEECH_ARGUMENTS])
    assert "already built" in capsys.readouterr().out


def test_background_noise_files_are_half_scale_16khz_int16_mono(speech_corpora):
    folder = speech_corpora[0] / "_background_noise_"
    assert sorted(path.stem for path in folder.iterdir()) == sorted(datasets.BACKGROUND_NOISE)
    for path in folder.iterdir():
        samples = read_wav(path)
        assert samples.shape == (NOISE_SECONDS * 16000,), path.name
        assert 16000 <= np.abs(samples.astype(np.int32)).max() <= 16400, f"{path.name} is not peak-normalized"


def test_white_pink_and_brown_noise_fall_0_3_and_6_db_per_octave(speech_corpora):
    folder = speech_corpora[0] / "_background_noise_"
    for name, slope in (("white_noise", 0), ("pink_noise", -3), ("brown_noise", -6)):
        measured = spectral_slope(read_wav(folder / f"{name}.wav"), low=50, high=4000)
        assert measured == pytest.approx(slope, abs=0.5), f"{name} falls {measured:.2f} dB per octave"


def test_hum_holds_its_power_at_50hz_and_harmonics(speech_corpora):
    samples = read_wav(speech_corpora[0] / "_background_noise_" / "hum.wav")
    assert share_at_harmonics(samples, fundamental=50) > 0.99
    frequencies, power = scipy.signal.periodogram(samples.astype(np.float64), fs=16000)
    assert frequencies[np.argmax(power)] == pytest.approx(50, abs=1)


def test_babble_has_no_gap_where_one_voice_stands_alone(speech_corpora):
    samples = read_wav(speech_corpora[0] / "_background_noise_" / "babble.wav").astype(np.float64)
    frame_rms = np.sqrt(np.mean(samples.reshape(-1, 1600) ** 2, axis=1))  # 100 ms frames
    assert frame_rms.min() > 0.2 * np.median(frame_rms)
    assert frame_rms.max() < 4 * np.median(frame_rms)


def test_no_unknown_words_and_no_background_noise_gives_the_words_alone(tmp_path):
    datasets.main(["speech-commands", "--out", str(tmp_path), "--words", "no", "--per_word", "2",
                   "--unknown_per_speaker", "0", "--no-background_noise", "--workers", "2"])
    assert sorted(wav_files(tmp_path)) == sorted(f"no/{path.name}" for path in (tmp_path / "no").iterdir())
    assert len(wav_files(tmp_path)) == 2


def test_interrupted_build_resumes_over_its_own_files_but_refuses_strays(tmp_path):
    arguments = ["speech-commands", "--out", str(tmp_path), "--words", "no", "--per_word", "1",
                 "--unknown_per_speaker", "2", "--noise_seconds", "1", "--workers", "2"]
    datasets.main(arguments)
    built = wav_files(tmp_path)
    (tmp_path / "corpus.json").unlink()
    datasets.main(arguments)
    assert wav_files(tmp_path) == built
    (tmp_path / "corpus.json").unlink()
    (tmp_path / "_background_noise_" / "stray.wav").write_bytes(b"")
    with pytest.raises(ValueError, match="_background_noise_/stray.wav"):
        datasets.main(arguments)


def test_unknown_words_neither_are_nor_sound_like_command_words():
    """By espeak-ng's phonemes, voicing ignored: no unknown word starts its first or stressed syllable with
    the consonants and vowel of a command word's, nor rhymes with its stressed syllable."""
    unknown, commands = set(datasets.UNKNOWN_WORDS), set(datasets.SPEECH_COMMANDS_WORDS)
    assert len(unknown) == len(datasets.UNKNOWN_WORDS) == 40 and not unknown & commands
    assert not set(datasets.BABBLE_WORDS) & (unknown | commands)

    def sound_keys(words: list[str]) -> dict[str, set[tuple[str, ...]]]:
        output = subprocess.run(["espeak-ng", "-q", "-x", "-v", "en-us"], input="\n".join(words), text=True,
                                capture_output=True, check=True).stdout.split()
        keys = {}
        for word, phonemes in zip(words, output, strict=True):
            phonemes = re.sub(r"[,#?-]", "", phonemes).translate(str.maketrans("bdgvzZ", "ptkfsS"))
            first = re.match(rf"({CONSONANTS})({VOWEL})", phonemes.replace("'", ""))
            stressed = re.search(rf"({CONSONANTS})'({VOWEL})(.?)", phonemes) or re.match(
                rf"({CONSONANTS})({VOWEL})(.?)", phonemes)
            keys[word] = {first.groups(), stressed.groups()[:2], ("rhyme", *stressed.groups()[1:])}
        return keys

    command_keys = sound_keys(sorted(commands))
    clashes = {word: sorted(command for command, keys in command_keys.items() if keys & word_keys)
               for word, word_keys in sound_keys(sorted(unknown)).items()}
    clashes = {word: clash for word, clash in clashes.items() if clash}
    assert not clashes, f"unknown words that sound like command words: {clashes}"


def test_festival_commands_layout_and_format(tmp_path):
    datasets.main(["festival-commands", "--out", str(tmp_path), "--words", "go", "--per_voice", "1",
                   "--unknown_per_speaker", "1"])
    voices = datasets.discover_festival_voices()
    assert_one_second_clips(tmp_path, words=["go"], speakers=len(voices), unknown_per_speaker=1)
    listed = (tmp_path / "testing_list.txt").read_text().splitlines()
    assert listed == sorted(wav_files(tmp_path)), "the festival set is test data only"


def test_noise_clips_layout_levels_spectra_and_determinism(tmp_path):
    for root in (tmp_path / "a", tmp_path / "b"):
        datasets.main(["noise-clips", "--out", str(root), "--per_kind", "2", "--seed", "5", "--workers", "2"])
    files = wav_files(tmp_path / "a")
    assert files == wav_files(tmp_path / "b"), "same arguments must give identical bytes"
    assert sorted(files) == sorted(f"_silence_/{kind}_{index:03d}_nohash_0.wav"
                                   for kind in datasets.NOISE_CLIP_PEAKS for index in range(2))
    assert (tmp_path / "a" / "testing_list.txt").read_text().splitlines() == sorted(files)
    for name in files:
        samples = read_wav(tmp_path / "a" / name)
        kind = re.fullmatch(r"_silence_/(.+)_\d{3}_nohash_0\.wav", name).group(1)
        low, high = datasets.NOISE_CLIP_PEAKS[kind]
        assert samples.shape == (16000,), name
        assert low * 32767 - 1 <= np.abs(samples.astype(np.int32)).max() <= high * 32767 + 1, name
        if kind in ("blue_noise", "violet_noise"):
            expected = {"blue_noise": 3, "violet_noise": 6}[kind]
            assert spectral_slope(samples, low=100, high=6000) == pytest.approx(expected, abs=0.5), name
        if kind == "hum_60hz":
            assert share_at_harmonics(samples, fundamental=60) > 0.99, name


def test_fashion_mnist_pngs_match_idx_and_testing_list(tmp_path):
    datasets.main(["fashion-mnist", "--out", str(tmp_path), "--limit_per_class", "3"])
    pngs = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.png"))
    assert len(pngs) == 10 * 2 * 3
    testing_list = (tmp_path / "testing_list.txt").read_text().splitlines()
    assert testing_list == sorted(name for name in pngs if "/test_" in name)
    assert len(testing_list) == 30
    with gzip.open(FASHION_SOURCE / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        test_images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(FASHION_SOURCE / "t10k-labels-idx1-ubyte.gz", "rb") as handle:
        test_labels = np.frombuffer(handle.read(), np.uint8, offset=8)
    first_bag = int(np.flatnonzero(test_labels == 8)[0])
    assert f"bag/test_{first_bag:05d}.png" in testing_list
    with Image.open(tmp_path / f"bag/test_{first_bag:05d}.png") as image:
        assert (image.mode, image.size) == ("L", (28, 28))
        np.testing.assert_array_equal(np.asarray(image), test_images[first_bag])


def test_refuses_an_out_dir_holding_another_corpus(tmp_path):
    (tmp_path / "bag").mkdir()
    (tmp_path / "bag" / "stray.png").write_bytes(b"")
    with pytest.raises(ValueError, match="bag/stray.png"):
        datasets.main(["fashion-mnist", "--out", str(tmp_path), "--limit_per_class", "1"])


def test_missing_fashion_source_names_the_apt_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=datasets.FASHION_APT):
        datasets.main(["fashion-mnist", "--out", str(tmp_path / "out"), "--source", str(tmp_path)])


@pytest.mark.parametrize("flag, value", [("--words", "yes,banana"), ("--unknown_per_speaker", "41")])
def test_bad_flag_value_is_rejected_by_name(flag, value, capsys):
    with pytest.raises(SystemExit):
        datasets.main(["speech-commands", "--out", "unused", flag, value])
    assert value in capsys.readouterr().err


def test_text2wave_pipe_output_loses_its_appended_header(tmp_path):
    text = tmp_path / "word.txt"
    text.write_text("go")
    streamed = subprocess.run(["text2wave", "-eval", "(voice_kal_diphone)", str(text), "-o", "-"],
                              capture_output=True, check=True).stdout
    rate, samples = datasets.parse_streamed_wav(streamed, source="go")
    # A leading 44-byte header, the samples, and the header text2wave appends because a pipe cannot seek.
    assert rate == 16000 and samples.size == (len(streamed) - 2 * 44) // 2
