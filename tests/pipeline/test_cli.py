"""`python -m beam_jobs.preprocess` as a person runs it: what it prints, and its exit status."""
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def preprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beam_jobs.preprocess", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory, make_tone_tree) -> pathlib.Path:
    return make_tone_tree(tmp_path_factory.mktemp("cli_tree"), per_class=6)


def test_help_starts_with_usage_and_names_the_cluster_flags():
    completed = preprocess("--help")
    assert completed.returncode == 0 and completed.stderr == ""
    assert completed.stdout.startswith("usage: python -m beam_jobs.preprocess")
    for flag in ("--audio_root", "--image_root", "--max_audio_bytes", "--image_channels", "--runner",
                 "--setup_file", "--verbose"):
        assert flag in completed.stdout, flag


def help_sections(text: str) -> dict[str, list[str]]:
    """{group title: the flags it lists} of an argparse --help, in order."""
    sections, title, lines = {}, None, text.splitlines()
    for line, next_line in zip(lines, lines[1:] + [""]):
        # A group's title is in lower case, as argparse's own "options" (the epilog's first line is a sentence).
        if line[:1].islower() and line.endswith(":") and next_line.startswith("  -"):
            title = line[:-1]
            sections[title] = []
        elif not line:
            title = None  # the end of a group; the epilog is none
        elif title is not None and line.startswith("  -"):
            sections[title].append(line.split()[0].rstrip(","))
    return sections


@pytest.mark.parametrize("module, groups", [
    ("beam_jobs.preprocess", ["options", "inputs", "output and snapshots", "streaming (--watch)",
                              "running unattended", "audio featurization", "image featurization", "splits",
                              "keyword spotting (audio): _unknown_ and _silence_ classes, as Speech Commands has them",
                              "runner (flags this command does not know are Beam pipeline options: below)"]),
    ("trainer.train", ["options", "data, model folder and workers", "model and optimisation", "devices",
                       "input pipeline", "audio augmentation (training only; 0 turns one off)"]),
])
def test_help_lists_the_flags_in_groups_a_person_scans(module, groups):
    completed = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr
    sections = help_sections(completed.stdout)
    assert list(sections) == groups
    assert sections["options"] == ["-h"], "every flag belongs in a group"
    assert all(sections[title] for title in groups), sections
    assert "--verbose" in sections[groups[-1]] or module == "trainer.train"


def test_a_run_prints_progress_and_the_summary_and_none_of_beams_chatter(small_tree, tmp_path):
    # The default runner: FnApiRunner with a worker process per core, whose start-up chatter is filtered.
    completed = preprocess(f"--audio_root={small_tree}", f"--output_dir={tmp_path}", "--in_process_below=0")

    assert completed.returncode == 0, completed.stderr
    assert "audio: committed snapshot 1: 12 examples and 0 errors from 12 input files" in completed.stdout
    assert "audio: 12 of 12 files (100%)" in completed.stderr
    for chatter in ("INFO:", "apitools", "semi_persistent_directory", "Worker:", "WARNING"):
        assert chatter not in completed.stdout + completed.stderr, chatter
    assert len(completed.stderr.splitlines()) <= 3, completed.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [".runs", "audio", "errors.jsonl"], (
        "no progress or temporary files left over")
    assert not list((tmp_path / ".runs").iterdir()), "the run gave its lease back"


def test_a_small_run_on_the_default_runner_runs_in_process_and_says_nothing_of_it(small_tree, tmp_path):
    completed = preprocess(f"--audio_root={small_tree}", f"--output_dir={tmp_path}")

    assert completed.returncode == 0, completed.stderr
    assert "audio: committed snapshot 1: 12 examples and 0 errors from 12 input files" in completed.stdout
    assert "WARNING" not in completed.stdout + completed.stderr, completed.stderr


def test_an_output_dir_that_is_a_file_fails_at_start_in_one_line(small_tree, tmp_path):
    (tmp_path / "taken").write_text("a file")
    completed = preprocess(f"--audio_root={small_tree}", f"--output_dir={tmp_path / 'taken' / 'out'}")

    assert completed.returncode == 2
    assert completed.stderr.splitlines()[-1] == (
        f"python -m beam_jobs.preprocess: error: --output_dir {tmp_path / 'taken' / 'out'}: "
        f"{tmp_path / 'taken'} is a file, not a folder")
    assert "Traceback" not in completed.stderr


def test_files_without_class_folders_fail_loudly(tmp_path, make_sine, make_wav, runner_flags):
    (tmp_path / "flat").mkdir()
    for take in range(3):
        (tmp_path / "flat" / f"{take}.wav").write_bytes(make_wav(make_sine(440, rate=8000), rate=8000))

    completed = preprocess(f"--audio_root={tmp_path / 'flat'}", f"--output_dir={tmp_path / 'out'}",
                           *runner_flags["in_memory"])

    assert completed.returncode == 1
    assert ("error: audio: no input file became an example: all 3 files lie directly in the root, and inputs go "
            "in ROOT/<label>/") in completed.stdout


def test_a_root_of_another_modality_fails_loudly(tmp_path, make_image, runner_flags):
    from PIL import Image

    (tmp_path / "pictures" / "cat").mkdir(parents=True)
    (tmp_path / "pictures" / "cat" / "a.png").write_bytes(make_image(Image.new("L", (4, 4)), "PNG"))

    completed = preprocess(f"--audio_root={tmp_path / 'pictures'}", f"--output_dir={tmp_path / 'out'}",
                           *runner_flags["in_memory"])

    assert completed.returncode == 1
    assert "error: audio: no input file became an example: none of the 1 files under its roots" in completed.stdout


def test_beam_jobs_never_imports_tensorflow_and_shares_a_process_with_it():
    script = ("import sys; import beam_jobs.preprocess, beam_jobs.table.raw_files, app.artifacts; "
              "assert 'tensorflow' not in sys.modules and 'tfrecord' not in sys.modules, 'imported'; "
              "import tensorflow, beam_jobs.records.examples; print('ok')")
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and completed.stdout.strip() == "ok", completed.stderr[-2000:]
