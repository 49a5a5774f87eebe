"""Demo corpora as folder-per-class trees: `<out>/<class>/<file>` plus `corpus.json`.

  speech-commands    the 30 Speech Commands v1 words, each said once by every
                     synthetic espeak-ng speaker: `<word>/<speaker>_nohash_0.wav`
  festival-commands  the same words said by the installed festival voices, a
                     never-trained-on test of generalisation to unseen voices;
                     `testing_list.txt` lists every clip, so all of it is test data
  fashion-mnist      the Fashion-MNIST IDX files as `<class>/<split>_<index>.png`,
                     with `testing_list.txt` naming the official test images

Clips are 1 s of 16 kHz 16-bit mono PCM. A speaker id is the first 8 hex digits
of the SHA-1 of its synthesis settings, so one file name always holds the same
audio and the Speech Commands split rule keeps a speaker in one split.
`corpus.json` is written last; a finished build with the same parameters is not
redone. Imports neither Beam nor TensorFlow.

    python -m beam_jobs.datasets speech-commands --out /tmp/corpora/speech --per_word 300
"""
import argparse
import concurrent.futures
import dataclasses
import gzip
import hashlib
import json
import math
import os
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import scipy.io.wavfile
import scipy.signal
from PIL import Image

SPEECH_COMMANDS_WORDS = (
    "bed", "bird", "cat", "dog", "down", "eight", "five", "four", "go", "happy",
    "house", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "wow", "yes", "zero",
)
FASHION_MNIST_CLASSES = (  # label order 0..9
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE
SILENCE_FRACTION = 0.005  # below this fraction of the peak is the synthesizer's padding, not the word
CORPUS_RECORD = "corpus.json"
CORPUS_FORMAT = 2  # raised when a fix changes the clips, so corpora built before it are rebuilt
TESTING_LIST = "testing_list.txt"
ESPEAK_APT = "espeak-ng"
FESTIVAL_APT = "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts"
FASHION_APT = "dataset-fashion-mnist"
# Inclusive ranges the synthetic speakers are drawn from; the slowest espeak-ng
# speed keeps even "marvin" in the slowest variants under one second.
ESPEAK_PITCH = (15, 85)
ESPEAK_WORDS_PER_MINUTE = (120, 220)
ESPEAK_AMPLITUDE = (40, 110)  # espeak-ng's default is 100; some variants clip above ~120
FESTIVAL_DURATION_STRETCH = (0.8, 1.2)
FESTIVAL_TAPE_FACTOR = (0.88, 1.12)
FESTIVAL_GAIN = (0.3, 0.8)  # festival normalises its output to a peak of 32000
IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclasses.dataclass(frozen=True)
class Speaker:
    """A synthetic voice: `command` reads one word on stdin and writes a wav to stdout.

    `tape_factor` > 1 plays the output back faster than it was made, raising
    pitch and formants together as a shorter vocal tract would; `gain` scales
    the samples.
    """
    command: tuple[str, ...]
    tape_factor: float = 1.0
    gain: float = 1.0

    @property
    def speaker_id(self) -> str:
        config = " ".join(self.command) + f" tape_factor={self.tape_factor} gain={self.gain}"
        return hashlib.sha1(config.encode("utf-8")).hexdigest()[:8]


def run_tool(command: list[str], *, apt: str, text: str = "") -> bytes:
    """Runs an external program with `text` on stdin; returns its stdout, raising a named error."""
    try:
        result = subprocess.run(command, input=text.encode("utf-8"), capture_output=True, check=False)
    except FileNotFoundError as error:
        raise RuntimeError(f"{command[0]!r} is not installed; apt-get install {apt}") from error
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", errors="replace").strip()
        raise RuntimeError(f"{' '.join(command)!r} on {text!r} exited {result.returncode}: {stderr}")
    return result.stdout


def parse_streamed_wav(data: bytes, *, source: str) -> tuple[int, np.ndarray]:
    """Decodes a 16-bit mono RIFF wav written to a pipe: (sample_rate, int16 [n]).

    A writer on a pipe cannot seek back to fill in chunk sizes, so the data
    chunk is taken to run to the end of the stream.
    """
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{source}: synthesizer output is not a RIFF wav (starts {data[:12]!r})")
    position, sample_rate = 12, None
    while position + 8 <= len(data):
        chunk_id, size = data[position:position + 4], int.from_bytes(data[position + 4:position + 8], "little")
        body = position + 8
        if chunk_id == b"fmt ":
            encoding, channels, sample_rate = struct.unpack("<HHI", data[body:body + 8])
            bits = struct.unpack("<H", data[body + 14:body + 16])[0]
            if (encoding, channels, bits) != (1, 1, 16):
                raise ValueError(f"{source}: expected 16-bit mono PCM, got format {encoding}, "
                                 f"{channels} channels, {bits} bits")
        elif chunk_id == b"data" and sample_rate is not None:
            payload = data[body:]
            # text2wave cannot seek back on a pipe, so it appends its finished 44-byte header instead.
            if len(payload) >= 44 and payload[-44:-40] == b"RIFF" and payload[-36:-32] == b"WAVE":
                payload = payload[:-44]
            return sample_rate, np.frombuffer(payload[:len(payload) // 2 * 2], "<i2")
        position = body + size + size % 2
    raise ValueError(f"{source}: synthesizer output has no fmt chunk followed by a data chunk")


def fit_to_one_second(samples: np.ndarray, *, source_rate: int, offset_key: str) -> tuple[np.ndarray, bool]:
    """Resamples a spoken word to 16 kHz and places it inside a one-second clip.

    Args:
      samples: [n] at `source_rate`, any dtype, in int16 units.
      offset_key: seeds where the word starts (real clips are not all aligned),
        so one file name always gets the same offset.

    Returns:
      (int16 [16000], whether the word ran over one second and lost its end).
    """
    audio = scipy.signal.resample_poly(samples.astype(np.float64), SAMPLE_RATE, source_rate)
    loud = np.flatnonzero(np.abs(audio) > SILENCE_FRACTION * np.abs(audio).max())
    if loud.size == 0:
        raise ValueError(f"{offset_key}: synthesized audio is silent")
    word = audio[loud[0]:loud[-1] + 1]
    truncated = word.size > CLIP_SAMPLES
    word = word[:CLIP_SAMPLES]
    key_hash = int.from_bytes(hashlib.sha1(offset_key.encode("utf-8")).digest()[:8], "big")
    offset = key_hash % (CLIP_SAMPLES - word.size + 1)
    clip = np.zeros(CLIP_SAMPLES)
    clip[offset:offset + word.size] = word
    return np.clip(np.round(clip), -32768, 32767).astype(np.int16), truncated


def synthesize_speaker(*, speaker: Speaker, words: list[str], out_dir: Path, apt: str) -> int:
    """Writes `<word>/<speaker_id>_nohash_0.wav` for every word; returns how many were cut to 1 s."""
    truncated_count = 0
    for word in words:
        relative = f"{word}/{speaker.speaker_id}_nohash_0.wav"
        source_rate, samples = parse_streamed_wav(run_tool(list(speaker.command), apt=apt, text=word),
                                                  source=relative)
        clip, truncated = fit_to_one_second(samples * speaker.gain, source_rate=round(source_rate * speaker.tape_factor),
                                            offset_key=relative)
        scipy.io.wavfile.write(out_dir / relative, SAMPLE_RATE, clip)
        truncated_count += truncated
    return truncated_count


def write_pngs(*, images: np.ndarray, relative_paths: list[str], out_dir: Path) -> int:
    """Writes uint8 [n, height, width] images as grayscale PNGs; returns n."""
    for image, relative in zip(images, relative_paths, strict=True):
        Image.fromarray(image).save(out_dir / relative)
    return len(relative_paths)


def run_in_pool(function, jobs: list[dict], *, workers: int, label: str) -> list:
    """Calls function(**job) for every job on `workers` processes, printing progress every 10%."""
    results, step = [], math.ceil(len(jobs) / 10)
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(function, **job) for job in jobs]
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            results.append(future.result())
            if done % step == 0 or done == len(jobs):
                print(f"{label}: {done}/{len(jobs)} jobs done", flush=True)
    return results


def is_finished(out_dir: Path, *, parameters: dict) -> bool:
    """Whether `out_dir` holds a finished build made with exactly these parameters."""
    record_path = out_dir / CORPUS_RECORD
    return record_path.exists() and json.loads(record_path.read_text())["parameters"] == parameters


def prepare_out_dir(out_dir: Path, *, expected: set[str]) -> None:
    """Creates the class folders, refusing a folder that holds files of another corpus."""
    present = {path.relative_to(out_dir).as_posix() for path in out_dir.rglob("*") if path.is_file()}
    foreign = sorted(present - expected - {CORPUS_RECORD, TESTING_LIST})
    if foreign:
        raise ValueError(f"--out {out_dir} holds {len(foreign)} files this corpus would not contain, "
                         f"e.g. {foreign[0]!r}; choose an empty folder or delete it")
    (out_dir / CORPUS_RECORD).unlink(missing_ok=True)
    for folder in sorted({Path(relative).parent for relative in expected}):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)


def write_corpus_record(out_dir: Path, *, parameters: dict, file_count: int) -> None:
    record = {"parameters": parameters, "file_count": file_count}
    (out_dir / CORPUS_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def discover_espeak_voices() -> tuple[list[str], list[str]]:
    """Returns (English voice names, variant names) that espeak-ng has installed, sorted."""
    listing = run_tool(["espeak-ng", "--voices=en"], apt=ESPEAK_APT).decode("utf-8").splitlines()[1:]
    voices = set()
    for line in listing:
        _, language, _, _, voice_file = line.split()[:5]
        # MBROLA voices need the separate mbrola program and its voice data.
        if language != "variant" and not voice_file.startswith("mb/"):
            voices.add(language)
    variant_listing = run_tool(["espeak-ng", "--voices=variant"], apt=ESPEAK_APT).decode("utf-8")
    # A bad variant name falls back silently to the plain voice, so take names from the files.
    variants = set(re.findall(r" !v/(.+?)(?: +\(|\s*$)", variant_listing, flags=re.MULTILINE))
    if not voices or not variants:
        raise RuntimeError(f"espeak-ng lists no English voices ({voices}) or no variants ({variants})")
    return sorted(voices), sorted(variants)


def sample_espeak_speakers(*, voices: list[str], variants: list[str], count: int, seed: int) -> list[Speaker]:
    """Draws `count` distinct espeak-ng speakers (voice+variant, pitch, speed, amplitude)."""
    rng, speakers = np.random.default_rng(seed), {}
    while len(speakers) < count:
        # Index 0 is the voice's own plain sound, without a variant.
        variant = ["", *(f"+{name}" for name in variants)][rng.integers(len(variants) + 1)]
        speaker = Speaker(command=(
            "espeak-ng", "--stdin", "--stdout", "-v", voices[rng.integers(len(voices))] + variant,
            "-p", str(rng.integers(ESPEAK_PITCH[0], ESPEAK_PITCH[1] + 1)),
            "-s", str(rng.integers(ESPEAK_WORDS_PER_MINUTE[0], ESPEAK_WORDS_PER_MINUTE[1] + 1)),
            "-a", str(rng.integers(ESPEAK_AMPLITUDE[0], ESPEAK_AMPLITUDE[1] + 1))))
        speakers.setdefault(speaker.speaker_id, speaker)
    return list(speakers.values())


def discover_festival_voices() -> list[str]:
    """Returns the English voices festival has installed (under voices/english or voices/us), sorted."""
    output = run_tool(["festival", "--batch", "(begin (voice.list) (print voice-locations))"],
                      apt=FESTIVAL_APT).decode("utf-8")
    locations = re.findall(r'\(([^\s()]+) \. "([^"]*)"\)', output)
    english = sorted(name for name, path in locations if Path(path).parent.name in ("english", "us"))
    if not english:
        raise RuntimeError(f"festival has no English voice (found {locations}); apt-get install {FESTIVAL_APT}")
    return english


def sample_festival_speakers(*, voices: list[str], per_voice: int, seed: int) -> list[Speaker]:
    """Draws `per_voice` distinct (speaking rate, pitch, volume) settings of every festival voice."""
    rng, speakers = np.random.default_rng(seed), []
    for voice in voices:
        drawn = {}
        while len(drawn) < per_voice:
            stretch = round(float(rng.uniform(*FESTIVAL_DURATION_STRETCH)), 2)
            # HTS voices ignore Duration_Stretch and take the hts_engine speed rate instead.
            rate = (f"(begin (Parameter.set 'Duration_Stretch {stretch}) (if (eq? (Parameter.get 'Synth_Method)"
                    f" 'HTS) (set! hts_engine_params (append hts_engine_params '((\"-r\" {round(1 / stretch, 4)}))))))")
            speaker = Speaker(
                command=("text2wave", "-eval", f"(voice_{voice})", "-eval", rate, "-o", "-"),
                tape_factor=round(float(rng.uniform(*FESTIVAL_TAPE_FACTOR)), 2),
                gain=round(float(rng.uniform(*FESTIVAL_GAIN)), 2))
            drawn.setdefault(speaker.speaker_id, speaker)
        speakers.extend(drawn.values())
    return speakers


def build_spoken_corpus(*, out_dir: Path, speakers: list[Speaker], words: list[str], parameters: dict,
                        workers: int, apt: str) -> None:
    """Has every speaker say every word into `out_dir`, then records the finished corpus."""
    label = parameters["command"]
    expected = {f"{word}/{speaker.speaker_id}_nohash_0.wav" for word in words for speaker in speakers}
    prepare_out_dir(out_dir, expected=expected)
    jobs = [dict(speaker=speaker, words=words, out_dir=out_dir, apt=apt) for speaker in speakers]
    truncated = sum(run_in_pool(synthesize_speaker, jobs, workers=workers, label=label))
    if parameters["command"] == "festival-commands":
        # Never trained on: listing every clip puts the whole set in the pipeline's test split.
        (out_dir / TESTING_LIST).write_text("".join(f"{relative}\n" for relative in sorted(expected)))
    write_corpus_record(out_dir, parameters=parameters, file_count=len(expected))
    print(f"{label}: wrote {len(expected)} clips ({len(words)} words x {len(speakers)} speakers, "
          f"{truncated} cut to 1 s) to {out_dir}", flush=True)


def read_idx(path: Path) -> np.ndarray:
    """Reads a gzipped IDX file (big-endian magic, dims, data) into an array of its shape."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic {data[:4].hex()})")
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    shape = tuple(int(size) for size in np.frombuffer(data, ">u4", count=ndim, offset=4))
    header = 4 + 4 * ndim
    if len(data) != header + dtype.itemsize * int(np.prod(shape)):
        raise ValueError(f"{path}: {len(data) - header} data bytes do not fit shape {shape} of {dtype}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def build_fashion_mnist(*, out_dir: Path, source: Path, limit_per_class: int | None, workers: int) -> None:
    """Exports Fashion-MNIST as `<class>/<train|test>_<index:05d>.png` plus testing_list.txt."""
    parameters = {"command": "fashion-mnist", "source": str(source), "limit_per_class": limit_per_class}
    if is_finished(out_dir, parameters=parameters):
        print(f"fashion-mnist: {out_dir} is already built with these parameters", flush=True)
        return
    jobs, expected = [], set()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images_path, labels_path = (source / f"{prefix}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1"))
        for path in (images_path, labels_path):
            if not path.exists():
                raise FileNotFoundError(f"Fashion-MNIST file {path} is missing; apt-get install {FASHION_APT}")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.shape[0] != labels.shape[0] or not set(np.unique(labels)) <= set(range(10)):
            raise ValueError(f"{images_path}: images {images.shape} do not match labels {labels.shape} in 0..9")
        for label, class_name in enumerate(FASHION_MNIST_CLASSES):
            indices = np.flatnonzero(labels == label)[:limit_per_class]
            relative_paths = [f"{class_name}/{split}_{index:05d}.png" for index in indices]
            expected.update(relative_paths)
            jobs.append(dict(images=images[indices], relative_paths=relative_paths, out_dir=out_dir))
    prepare_out_dir(out_dir, expected=expected)
    run_in_pool(write_pngs, jobs, workers=workers, label="fashion-mnist")
    testing_list = sorted(relative for relative in expected if "/test_" in relative)
    (out_dir / TESTING_LIST).write_text("".join(f"{relative}\n" for relative in testing_list))
    write_corpus_record(out_dir, parameters=parameters, file_count=len(expected))
    print(f"fashion-mnist: wrote {len(expected)} PNGs ({len(testing_list)} in {TESTING_LIST}) to {out_dir}",
          flush=True)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def word_list(text: str) -> list[str]:
    words = [word.strip() for word in text.split(",")]
    unknown = [word for word in words if word not in SPEECH_COMMANDS_WORDS]
    if unknown or len(set(words)) != len(words):
        raise argparse.ArgumentTypeError(f"{text!r} must be distinct Speech Commands words; unknown: {unknown}")
    return words


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.datasets", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    speech = commands.add_parser("speech-commands", help="Speech Commands words said by espeak-ng speakers")
    speech.add_argument("--per_word", type=positive_int, default=300, help="speakers, each saying every word once")
    festival = commands.add_parser("festival-commands", help="Speech Commands words said by festival voices")
    festival.add_argument("--per_voice", type=positive_int, default=5, help="rate/pitch/volume settings per voice")
    for spoken in (speech, festival):
        spoken.add_argument("--words", type=word_list, default=list(SPEECH_COMMANDS_WORDS),
                            help="comma-separated subset of the 30 words (default: all)")
        spoken.add_argument("--seed", type=int, default=0)
    fashion = commands.add_parser("fashion-mnist", help="Fashion-MNIST IDX files as PNG folders")
    fashion.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    fashion.add_argument("--limit_per_class", type=positive_int, default=None,
                         help="at most this many train and this many test images per class")
    for command in (speech, festival, fashion):
        command.add_argument("--out", type=Path, required=True)
        command.add_argument("--workers", type=positive_int, default=os.cpu_count())
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "fashion-mnist":
        build_fashion_mnist(out_dir=args.out, source=args.source, limit_per_class=args.limit_per_class,
                            workers=args.workers)
        return
    if args.command == "speech-commands":
        apt, engine = ESPEAK_APT, run_tool(["espeak-ng", "--version"], apt=ESPEAK_APT)
        parameters = {"speakers": args.per_word}
    else:
        apt, engine = FESTIVAL_APT, run_tool(["festival", "--version"], apt=FESTIVAL_APT)
        parameters = {"per_voice": args.per_voice}
    parameters.update(format=CORPUS_FORMAT, command=args.command, engine=engine.decode("utf-8").strip(), words=args.words,
                      seed=args.seed)
    if is_finished(args.out, parameters=parameters):
        print(f"{args.command}: {args.out} is already built with these parameters", flush=True)
        return
    if args.command == "speech-commands":
        voices, variants = discover_espeak_voices()
        speakers = sample_espeak_speakers(voices=voices, variants=variants, count=args.per_word, seed=args.seed)
    else:
        speakers = sample_festival_speakers(voices=discover_festival_voices(), per_voice=args.per_voice,
                                            seed=args.seed)
    build_spoken_corpus(out_dir=args.out, speakers=speakers, words=args.words, parameters=parameters,
                        workers=args.workers, apt=apt)


if __name__ == "__main__":
    main()
