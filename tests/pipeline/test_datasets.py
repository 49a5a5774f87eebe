"""End-to-end tests of the demo corpus builders, on tiny subsets written to tmp_path."""
import gzip
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from beam_jobs import datasets

FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")


def wav_files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*.wav"))}


def assert_one_second_clips(root: Path, *, words: list[str], per_word: int) -> None:
    files = wav_files(root)
    assert sorted({name.split("/")[0] for name in files}) == sorted(words)
    assert len(files) == len(words) * per_word
    for name in files:
        assert re.fullmatch(r"[a-z]+/[0-9a-f]{8}_nohash_0\.wav", name), name
        rate, samples = wavfile.read(root / name)
        assert (rate, samples.dtype, samples.shape) == (16000, np.int16, (16000,)), name
        assert np.abs(samples.astype(np.int32)).max() > 1000, f"{name} is near-silent"
    speakers = {name.split("/")[1] for name in files}
    assert len(speakers) == per_word, "every speaker should say every word once"


def test_speech_commands_layout_format_and_determinism(tmp_path, capsys):
    arguments = ["--words", "yes,sheila", "--per_word", "2", "--seed", "3", "--workers", "2"]
    datasets.main(["speech-commands", "--out", str(tmp_path / "a"), *arguments])
    datasets.main(["speech-commands", "--out", str(tmp_path / "b"), *arguments])
    assert_one_second_clips(tmp_path / "a", words=["yes", "sheila"], per_word=2)
    assert wav_files(tmp_path / "a") == wav_files(tmp_path / "b"), "same arguments must give identical bytes"
    capsys.readouterr()
    datasets.main(["speech-commands", "--out", str(tmp_path / "a"), *arguments])
    assert "already built" in capsys.readouterr().out


def test_festival_commands_layout_and_format(tmp_path):
    datasets.main(["festival-commands", "--out", str(tmp_path), "--words", "go", "--per_voice", "1"])
    voices = datasets.discover_festival_voices()
    assert_one_second_clips(tmp_path, words=["go"], per_word=len(voices))
    listed = (tmp_path / "testing_list.txt").read_text().splitlines()
    assert listed == sorted(wav_files(tmp_path)), "the festival set is test data only"


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


def test_unknown_word_is_rejected(capsys):
    with pytest.raises(SystemExit):
        datasets.main(["speech-commands", "--out", "unused", "--words", "yes,banana"])
    assert "banana" in capsys.readouterr().err


def test_text2wave_pipe_output_loses_its_appended_header(tmp_path):
    text = tmp_path / "word.txt"
    text.write_text("go")
    streamed = subprocess.run(["text2wave", "-eval", "(voice_kal_diphone)", str(text), "-o", "-"],
                              capture_output=True, check=True).stdout
    rate, samples = datasets.parse_streamed_wav(streamed, source="go")
    # A leading 44-byte header, the samples, and the header text2wave appends because a pipe cannot seek.
    assert rate == 16000 and samples.size == (len(streamed) - 2 * 44) // 2
