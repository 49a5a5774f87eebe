"""Demo corpora as folder-per-class trees: `<out>/<class>/<file>` plus `corpus.json`.

  speech-commands    the 30 Speech Commands v1 words, each said once by every
                     synthetic espeak-ng speaker: `<word>/<speaker>_nohash_0.wav`;
                     each speaker also says a few UNKNOWN_WORDS, filed the same
                     way; `_background_noise_/<name>.wav` holds 30 s of white,
                     pink and brown noise, mains hum, a fan and espeak-ng babble
  festival-commands  the same words (and unknown words) said by the installed
                     festival voices, a never-trained-on test of generalisation
                     to unseen voices; `testing_list.txt` lists every clip, so
                     all of it is test data
  noise-clips        `_silence_/<kind>_<index>_nohash_0.wav`: one-second noises
                     unlike the background noise (rising spectra, narrow bands,
                     60 Hz hum, 100/120 Hz buzz, clicks, rumble, odd levels), a
                     test of the silence class; all of it is in testing_list.txt
  fashion-mnist      the Fashion-MNIST IDX files as `<class>/<split>_<index>.png`,
                     with `testing_list.txt` naming the official test images

Clips are 1 s of 16 kHz 16-bit mono PCM. A speaker id is the first 8 hex digits
of the SHA-1 of its synthesis settings, so one file name always holds the same
audio and the Speech Commands split rule keeps a speaker in one split. Noise is
drawn from generators seeded by --seed and the file's name, so a rebuild gives
the same bytes. `corpus.json` is written last; a finished build with the same
parameters is not redone. Imports neither Beam nor TensorFlow.

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
# Out-of-vocabulary words for the unknown class. None begins with the consonants and vowel of a command
# word's first or stressed syllable, nor rhymes with one ("wonder" would hide "one", "market" "marvin").
UNKNOWN_WORDS = (
    "about", "animal", "answer", "basket", "because", "blanket", "carpet", "chair", "children", "circle",
    "cookie", "dinner", "engine", "family", "forest", "garden", "guitar", "jacket", "journey", "kitchen",
    "lantern", "little", "monkey", "morning", "music", "number", "paper", "people", "pillow", "planet",
    "salad", "station", "sugar", "summer", "table", "valley", "village", "water", "whistle", "window",
)
UNKNOWN_PER_SPEAKER = 3
FASHION_MNIST_CLASSES = (  # label order 0..9
    "t-shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
SAMPLE_RATE = 16000
CLIP_SAMPLES = SAMPLE_RATE
SILENCE_FRACTION = 0.005  # below this fraction of the peak is the synthesizer's padding, not the word
CORPUS_RECORD = "corpus.json"
CORPUS_FORMAT = 3  # raised when a fix changes the clips, so corpora built before it are rebuilt
TESTING_LIST = "testing_list.txt"
BACKGROUND_NOISE_FOLDER = "_background_noise_"  # the folder names of Speech Commands
SILENCE_FOLDER = "_silence_"
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
# Background noise, all drawn from seeded generators and our own synthesizers, so we may ship it.
BACKGROUND_NOISE = ("white_noise", "pink_noise", "brown_noise", "hum", "fan", "babble")
BACKGROUND_NOISE_SECONDS = 30
BACKGROUND_NOISE_PEAK = 0.5  # of full scale; Speech Commands' noise files peak at various levels around it
NOISE_LOWEST_HZ = 20  # coloured noise holds nothing below, so brown noise does not wander
HUM_HZ = 50
HUM_HARMONICS = (1.0, 0.6, 0.4, 0.25, 0.15)  # amplitudes at 50, 100, ... 250 Hz
HUM_HISS = 0.02  # standard deviation of the white noise under the hum, relative to its fundamental
DRIFT_SECONDS = 2.0  # hum harmonics and the fan's loudness drift between random levels this often...
DRIFT_DEPTH = 0.3  # ...by up to this fraction
FAN_BAND_HZ = (120, 1500)
BABBLE_TALKERS = 6  # streams of phrases at once; their short pauses leave 4-6 audible nearly all the time
BABBLE_SPEAKERS = 40  # espeak-ng speakers drawn for the babble, one at random for each phrase
BABBLE_PHRASE_WORDS = (3, 6)
BABBLE_PAUSE_SECONDS = (0.0, 0.2)
BABBLE_GAIN = (0.5, 1.0)
BABBLE_WORDS = (  # in neither SPEECH_COMMANDS_WORDS nor UNKNOWN_WORDS, nor holding one ("often", "someone")
    "across", "again", "almost", "along", "already", "although", "among", "around", "away", "behind",
    "below", "between", "business", "certain", "city", "country", "during", "early", "enough", "every",
    "example", "friend", "general", "government", "ground", "however", "important", "interest", "later",
    "matter", "maybe", "member", "moment", "mother", "nothing", "order", "other", "perhaps", "place", "point",
    "public", "really", "school", "should", "simple", "special", "story", "through", "usual", "weather",
    "while", "without", "world", "would",
)
# noise-clips: kinds unlike the background noise, and the range their peaks (of full scale) are drawn
# from, log-uniformly.
NOISE_CLIP_PEAKS = {
    "blue_noise": (0.02, 0.5), "violet_noise": (0.02, 0.5), "band_noise": (0.02, 0.5),
    "hum_60hz": (0.02, 0.5), "buzz": (0.02, 0.5), "white_noise": (0.01, 0.7), "clicks": (0.05, 0.9),
    "rumble": (0.003, 0.03),
}
NOISE_CLIPS_PER_KIND = 40
BAND_NOISE_CENTRE_HZ = (150, 6000)
BAND_NOISE_OCTAVES = (1 / 3, 1)
HUM_60HZ_HARMONICS = (2, 8)  # how many harmonics of 60 Hz, each at a random amplitude
BUZZ_HZ = (100, 120)
BUZZ_TOP_HZ = 4000
BUZZ_ROLLOFF = (0.5, 1.5)  # harmonic k has amplitude k ** -rolloff
CLICKS_PER_SECOND = (2, 40)
CLICK_SECONDS = 0.002
RUMBLE_TOP_HZ = (40, 120)
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
    def voice(self) -> str:
        """The synthesizer's voice: espeak-ng's -v (voice+variant), festival's voice name."""
        if "-v" in self.command:
            return self.command[self.command.index("-v") + 1]
        return next(part[len("(voice_"):-1] for part in self.command if part.startswith("(voice_"))

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


def stable_hash(text: str) -> int:
    """A 64-bit number drawn from `text`, the same in every process and run (unlike hash())."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def speak(speaker: Speaker, text: str, *, apt: str, source: str) -> np.ndarray:
    """float64 [n] at 16 kHz in int16 units: `text` said by `speaker`, with its gain and tape factor."""
    source_rate, samples = parse_streamed_wav(run_tool(list(speaker.command), apt=apt, text=text), source=source)
    return scipy.signal.resample_poly(samples * speaker.gain, SAMPLE_RATE, round(source_rate * speaker.tape_factor))


def trim_silence(audio: np.ndarray, *, source: str) -> np.ndarray:
    """`audio` [n] without the synthesizer's quiet padding before and after the speech."""
    loud = np.flatnonzero(np.abs(audio) > SILENCE_FRACTION * np.abs(audio).max())
    if loud.size == 0:
        raise ValueError(f"{source}: synthesized audio is silent")
    return audio[loud[0]:loud[-1] + 1]


def fit_to_one_second(audio: np.ndarray, *, offset_key: str) -> tuple[np.ndarray, bool]:
    """Places a spoken word inside a one-second clip.

    Args:
      audio: float [n] at 16 kHz in int16 units.
      offset_key: seeds where the word starts (real clips are not all aligned),
        so one file name always gets the same offset.

    Returns:
      (int16 [16000], whether the word ran over one second and lost its end).
    """
    word = trim_silence(audio, source=offset_key)
    truncated = word.size > CLIP_SAMPLES
    word = word[:CLIP_SAMPLES]
    offset = stable_hash(offset_key) % (CLIP_SAMPLES - word.size + 1)
    clip = np.zeros(CLIP_SAMPLES)
    clip[offset:offset + word.size] = word
    return np.clip(np.round(clip), -32768, 32767).astype(np.int16), truncated


def synthesize_speaker(*, speaker: Speaker, words: list[str], out_dir: Path, apt: str) -> int:
    """Writes `<word>/<speaker_id>_nohash_0.wav` for every word; returns how many were cut to 1 s."""
    truncated_count = 0
    for word in words:
        relative = f"{word}/{speaker.speaker_id}_nohash_0.wav"
        clip, truncated = fit_to_one_second(speak(speaker, word, apt=apt, source=relative), offset_key=relative)
        scipy.io.wavfile.write(out_dir / relative, SAMPLE_RATE, clip)
        truncated_count += truncated
    return truncated_count


def unknown_words_of(speaker: Speaker, *, count: int) -> list[str]:
    """The `count` UNKNOWN_WORDS this speaker says, drawn from its id; a smaller count keeps a prefix."""
    order = np.random.default_rng(int(speaker.speaker_id, 16)).permutation(len(UNKNOWN_WORDS))
    return [UNKNOWN_WORDS[index] for index in order[:count]]


def coloured_noise(rng: np.random.Generator, samples: int, *, exponent: float) -> np.ndarray:
    """float64 [samples] whose power goes as frequency ** exponent above NOISE_LOWEST_HZ, none below.

    exponent 0 is white, -1 pink, -2 brown (the spectrum of integrated white noise, here without the
    drift below NOISE_LOWEST_HZ), 1 blue, 2 violet. Shaped in one FFT, so the noise loops seamlessly.
    """
    frequencies = np.fft.rfftfreq(samples, d=1 / SAMPLE_RATE)
    gains = np.zeros_like(frequencies)
    audible = frequencies >= NOISE_LOWEST_HZ
    gains[audible] = frequencies[audible] ** (exponent / 2)
    return np.fft.irfft(np.fft.rfft(rng.standard_normal(samples)) * gains, n=samples)


def band_noise(rng: np.random.Generator, samples: int, *, band: tuple[float, float]) -> np.ndarray:
    """float64 [samples] of white noise through a 4th-order Butterworth band-pass of `band` Hz."""
    sos = scipy.signal.butter(4, band, btype="bandpass", fs=SAMPLE_RATE, output="sos")
    # One extra second lets the filter settle before the part that is kept.
    return scipy.signal.sosfilt(sos, rng.standard_normal(samples + SAMPLE_RATE))[SAMPLE_RATE:]


def slow_drift(rng: np.random.Generator, samples: int) -> np.ndarray:
    """float64 [samples] gain of 1 +- DRIFT_DEPTH gliding between random levels every DRIFT_SECONDS."""
    period = DRIFT_SECONDS * SAMPLE_RATE
    levels = 1 + DRIFT_DEPTH * rng.uniform(-1, 1, size=math.ceil(samples / period) + 1)
    position = np.arange(samples) / period
    index = position.astype(int)
    # Raised-cosine glides have no corners, which would be heard as clicks in a hum.
    weight = (1 - np.cos(np.pi * (position - index))) / 2
    return levels[index] * (1 - weight) + levels[index + 1] * weight


def mains_hum(rng: np.random.Generator, samples: int, *, fundamental: float, amplitudes) -> np.ndarray:
    """float64 [samples]: harmonic k of `fundamental` at amplitudes[k - 1], random phase, drifting level."""
    time = np.arange(samples) / SAMPLE_RATE
    hum = np.zeros(samples)
    for harmonic, amplitude in enumerate(amplitudes, start=1):
        phase = rng.uniform(0, 2 * np.pi)
        hum += amplitude * slow_drift(rng, samples) * np.sin(2 * np.pi * harmonic * fundamental * time + phase)
    return hum


def clicks(rng: np.random.Generator, samples: int) -> np.ndarray:
    """float64 [samples] of crackle: sparse impulses of random size, each ringing for CLICK_SECONDS."""
    count = 1 + rng.poisson(rng.uniform(*CLICKS_PER_SECOND) * samples / SAMPLE_RATE)
    impulses = np.zeros(samples)
    impulses[rng.integers(samples, size=count)] = rng.choice([-1, 1], size=count) * rng.uniform(0.2, 1, size=count)
    length = round(CLICK_SECONDS * SAMPLE_RATE)
    ring = rng.standard_normal(length) * np.exp(-5 * np.arange(length) / length)
    return np.convolve(impulses, ring)[:samples]


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def synthesize_noise(kind: str, rng: np.random.Generator, samples: int) -> np.ndarray:
    """float64 [samples] of one kind of BACKGROUND_NOISE (but babble) or NOISE_CLIP_PEAKS, at any level."""
    match kind:
        case "white_noise" | "pink_noise" | "brown_noise" | "blue_noise" | "violet_noise":
            exponents = {"white_noise": 0, "pink_noise": -1, "brown_noise": -2, "blue_noise": 1, "violet_noise": 2}
            return coloured_noise(rng, samples, exponent=exponents[kind])
        case "hum":
            return mains_hum(rng, samples, fundamental=HUM_HZ, amplitudes=HUM_HARMONICS) + (
                HUM_HISS * rng.standard_normal(samples))
        case "fan":
            return band_noise(rng, samples, band=FAN_BAND_HZ) * slow_drift(rng, samples)
        case "band_noise":
            centre, half_width = log_uniform(rng, *BAND_NOISE_CENTRE_HZ), rng.uniform(*BAND_NOISE_OCTAVES) / 2
            return band_noise(rng, samples, band=(centre * 2 ** -half_width, centre * 2 ** half_width))
        case "hum_60hz":
            count = rng.integers(HUM_60HZ_HARMONICS[0], HUM_60HZ_HARMONICS[1] + 1)
            return mains_hum(rng, samples, fundamental=60, amplitudes=rng.uniform(0.05, 1, size=count))
        case "buzz":
            fundamental = BUZZ_HZ[rng.integers(len(BUZZ_HZ))]
            harmonics = np.arange(1, BUZZ_TOP_HZ // fundamental + 1)
            return mains_hum(rng, samples, fundamental=fundamental,
                             amplitudes=harmonics ** -rng.uniform(*BUZZ_ROLLOFF))
        case "clicks":
            return clicks(rng, samples)
        case "rumble":
            return band_noise(rng, samples, band=(NOISE_LOWEST_HZ, rng.uniform(*RUMBLE_TOP_HZ)))
    raise ValueError(f"unknown kind of noise {kind!r}")


def to_int16(audio: np.ndarray, *, peak: float, source: str) -> np.ndarray:
    """int16 [n]: float `audio` [n] scaled so that its largest magnitude is `peak` of full scale."""
    largest = np.abs(audio).max()
    if largest == 0:
        raise ValueError(f"{source}: generated audio is silent")
    return np.round(audio * (peak * 32767 / largest)).astype(np.int16)


def write_noise(*, kind: str, seed: int, samples: int, peak_range: tuple[float, float], path: Path) -> None:
    """Writes `samples` of `kind` of noise to `path`, peaking at a level drawn log-uniformly from peak_range."""
    rng = np.random.default_rng(seed)
    peak = log_uniform(rng, *peak_range)
    scipy.io.wavfile.write(path, SAMPLE_RATE, to_int16(synthesize_noise(kind, rng, samples), peak=peak,
                                                       source=str(path)))


def synthesize_babble_talker(*, seed: int, samples: int, speakers: list[Speaker], apt: str) -> np.ndarray:
    """float64 [samples] in int16 units: one talker's stream of BABBLE_WORDS phrases with short pauses.

    Each phrase is said by a random one of `speakers`; the stream starts up to
    a second before the clip, so talkers do not all begin at once.
    """
    rng, talker = np.random.default_rng(seed), np.zeros(samples)
    position = -int(rng.integers(SAMPLE_RATE))
    while position < samples:
        speaker = speakers[rng.integers(len(speakers))]
        phrase = " ".join(rng.choice(BABBLE_WORDS, size=rng.integers(BABBLE_PHRASE_WORDS[0],
                                                                     BABBLE_PHRASE_WORDS[1] + 1)))
        audio = rng.uniform(*BABBLE_GAIN) * trim_silence(speak(speaker, phrase, apt=apt, source=phrase),
                                                         source=phrase)
        first = max(0, -position)
        heard = audio[first:samples - position]
        talker[position + first:position + first + heard.size] = heard
        position += audio.size + round(rng.uniform(*BABBLE_PAUSE_SECONDS) * SAMPLE_RATE)
    return talker


def background_noise_path(name: str) -> str:
    return f"{BACKGROUND_NOISE_FOLDER}/{name}.wav"


def build_background_noise(*, out_dir: Path, seconds: int, seed: int, babble_speakers: list[Speaker],
                           workers: int, apt: str) -> None:
    """Writes `_background_noise_/<name>.wav` for every BACKGROUND_NOISE name.

    Each is `seconds` of 16 kHz int16 mono peaking at BACKGROUND_NOISE_PEAK,
    drawn from a generator seeded by `seed` and its name. The babble mixes
    BABBLE_TALKERS streams of phrases by `babble_speakers`.
    """
    samples, peak = seconds * SAMPLE_RATE, BACKGROUND_NOISE_PEAK
    jobs = [dict(kind=name, seed=stable_hash(f"{seed}/{name}"), samples=samples, peak_range=(peak, peak),
                 path=out_dir / background_noise_path(name)) for name in BACKGROUND_NOISE if name != "babble"]
    run_in_pool(write_noise, jobs, workers=workers, label="background noise")
    talkers = [dict(seed=stable_hash(f"{seed}/babble/{talker}"), samples=samples, speakers=babble_speakers,
                    apt=apt) for talker in range(BABBLE_TALKERS)]
    babble = np.sum(run_in_pool(synthesize_babble_talker, talkers, workers=workers, label="babble"), axis=0)
    path = out_dir / background_noise_path("babble")
    scipy.io.wavfile.write(path, SAMPLE_RATE, to_int16(babble, peak=peak, source=str(path)))


def write_pngs(*, images: np.ndarray, relative_paths: list[str], out_dir: Path) -> int:
    """Writes uint8 [n, height, width] images as grayscale PNGs; returns n."""
    for image, relative in zip(images, relative_paths, strict=True):
        Image.fromarray(image).save(out_dir / relative)
    return len(relative_paths)


def run_in_pool(function, jobs: list[dict], *, workers: int, label: str) -> list:
    """Calls function(**job) for every job on `workers` processes, printing progress every 10%.

    Returns the results in the order of `jobs`, so that summing them gives the same bits every time.
    """
    step = math.ceil(len(jobs) / 10)
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(function, **job) for job in jobs]
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            future.result()
            if done % step == 0 or done == len(jobs):
                print(f"{label}: {done}/{len(jobs)} jobs done", flush=True)
    return [future.result() for future in futures]


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


def write_testing_list(out_dir: Path, relative_paths) -> None:
    (out_dir / TESTING_LIST).write_text("".join(f"{relative}\n" for relative in sorted(relative_paths)))


def write_corpus_record(out_dir: Path, *, parameters: dict, file_count: int, voices: dict | None = None) -> None:
    """corpus.json; `voices` ({speaker id: voice}) lets a report break accuracy down by voice."""
    record = {"parameters": parameters, "file_count": file_count, **({"voices": voices} if voices else {})}
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


def build_spoken_corpus(*, out_dir: Path, speakers: list[Speaker], words: list[str], unknown_per_speaker: int,
                        background_noise: dict | None, parameters: dict, workers: int, apt: str) -> None:
    """Has every speaker say every word and its unknown words into `out_dir`, then records the corpus.

    background_noise: the arguments of build_background_noise but out_dir,
      workers and apt, or None for no `_background_noise_` folder.
    """
    label = parameters["command"]
    said = {speaker: [*words, *unknown_words_of(speaker, count=unknown_per_speaker)] for speaker in speakers}
    clips = {f"{word}/{speaker.speaker_id}_nohash_0.wav" for speaker, speaker_words in said.items()
             for word in speaker_words}
    noise = [background_noise_path(name) for name in BACKGROUND_NOISE] if background_noise else []
    prepare_out_dir(out_dir, expected=clips | set(noise))
    jobs = [dict(speaker=speaker, words=speaker_words, out_dir=out_dir, apt=apt)
            for speaker, speaker_words in said.items()]
    truncated = sum(run_in_pool(synthesize_speaker, jobs, workers=workers, label=label))
    if background_noise is not None:
        build_background_noise(out_dir=out_dir, workers=workers, apt=apt, **background_noise)
    if parameters["command"] == "festival-commands":
        # Never trained on: listing every clip puts the whole set in the pipeline's test split.
        write_testing_list(out_dir, clips)
    write_corpus_record(out_dir, parameters=parameters, file_count=len(clips) + len(noise),
                        voices={speaker.speaker_id: speaker.voice for speaker in speakers})
    print(f"{label}: wrote {len(clips)} clips ({len(words)} words and {unknown_per_speaker} unknown words x "
          f"{len(speakers)} speakers, {truncated} cut to 1 s){f' and {len(noise)} noise files' if noise else ''} "
          f"to {out_dir}", flush=True)


def build_noise_clips(*, out_dir: Path, per_kind: int, seed: int, workers: int) -> None:
    """Writes `_silence_/<kind>_<index:03d>_nohash_0.wav`, per_kind of every NOISE_CLIP_PEAKS kind, all test data."""
    parameters = {"format": CORPUS_FORMAT, "command": "noise-clips", "per_kind": per_kind, "seed": seed}
    if is_finished(out_dir, parameters=parameters):
        print(f"noise-clips: {out_dir} is already built with these parameters", flush=True)
        return
    kind_of = {f"{kind}_{index:03d}": kind for kind in NOISE_CLIP_PEAKS for index in range(per_kind)}
    relative = {name: f"{SILENCE_FOLDER}/{name}_nohash_0.wav" for name in kind_of}
    prepare_out_dir(out_dir, expected=set(relative.values()))
    jobs = [dict(kind=kind, seed=stable_hash(f"{seed}/{name}"), samples=CLIP_SAMPLES, peak_range=NOISE_CLIP_PEAKS[kind],
                 path=out_dir / relative[name]) for name, kind in kind_of.items()]
    run_in_pool(write_noise, jobs, workers=workers, label="noise-clips")
    # Never trained on: listing every clip puts the whole set in the pipeline's test split.
    write_testing_list(out_dir, relative.values())
    write_corpus_record(out_dir, parameters=parameters, file_count=len(relative))
    print(f"noise-clips: wrote {len(relative)} clips ({len(NOISE_CLIP_PEAKS)} kinds x {per_kind}) to {out_dir}",
          flush=True)


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
    testing_list = [relative for relative in expected if "/test_" in relative]
    write_testing_list(out_dir, testing_list)
    write_corpus_record(out_dir, parameters=parameters, file_count=len(expected))
    print(f"fashion-mnist: wrote {len(expected)} PNGs ({len(testing_list)} in {TESTING_LIST}) to {out_dir}",
          flush=True)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def unknown_word_count(text: str) -> int:
    value = int(text)
    if not 0 <= value <= len(UNKNOWN_WORDS):
        raise argparse.ArgumentTypeError(f"must be 0 to {len(UNKNOWN_WORDS)}, got {value}")
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
    speech.add_argument("--background_noise", action=argparse.BooleanOptionalAction, default=True,
                        help=f"write {BACKGROUND_NOISE_FOLDER}/ with {', '.join(BACKGROUND_NOISE)}")
    speech.add_argument("--noise_seconds", type=positive_int, default=BACKGROUND_NOISE_SECONDS,
                        help="length of each background noise file")
    festival = commands.add_parser("festival-commands", help="Speech Commands words said by festival voices")
    festival.add_argument("--per_voice", type=positive_int, default=5, help="rate/pitch/volume settings per voice")
    noise = commands.add_parser("noise-clips", help=f"one-second noises unlike the background noise in "
                                                    f"{SILENCE_FOLDER}/, all test data")
    noise.add_argument("--per_kind", type=positive_int, default=NOISE_CLIPS_PER_KIND,
                       help=f"clips of each kind: {', '.join(NOISE_CLIP_PEAKS)}")
    for spoken in (speech, festival):
        spoken.add_argument("--words", type=word_list, default=list(SPEECH_COMMANDS_WORDS),
                            help="comma-separated subset of the 30 words (default: all)")
        spoken.add_argument("--unknown_per_speaker", type=unknown_word_count, default=UNKNOWN_PER_SPEAKER,
                            help=f"out-of-vocabulary words (of {len(UNKNOWN_WORDS)}) each speaker also "
                                 f"says, for the unknown class")
    for seeded in (speech, festival, noise):
        seeded.add_argument("--seed", type=int, default=0)
    fashion = commands.add_parser("fashion-mnist", help="Fashion-MNIST IDX files as PNG folders")
    fashion.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    fashion.add_argument("--limit_per_class", type=positive_int, default=None,
                         help="at most this many train and this many test images per class")
    for command in (speech, festival, noise, fashion):
        command.add_argument("--out", type=Path, required=True)
        command.add_argument("--workers", type=positive_int, default=os.cpu_count())
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.command == "fashion-mnist":
        build_fashion_mnist(out_dir=args.out, source=args.source, limit_per_class=args.limit_per_class,
                            workers=args.workers)
        return
    if args.command == "noise-clips":
        build_noise_clips(out_dir=args.out, per_kind=args.per_kind, seed=args.seed, workers=args.workers)
        return
    if args.command == "speech-commands":
        apt, engine = ESPEAK_APT, run_tool(["espeak-ng", "--version"], apt=ESPEAK_APT)
        noise_seconds = args.noise_seconds if args.background_noise else None
        parameters = {"speakers": args.per_word, "background_noise_seconds": noise_seconds}
    else:
        apt, engine = FESTIVAL_APT, run_tool(["festival", "--version"], apt=FESTIVAL_APT)
        parameters = {"per_voice": args.per_voice}
    parameters.update(format=CORPUS_FORMAT, command=args.command, engine=engine.decode("utf-8").strip(), words=args.words,
                      unknown_per_speaker=args.unknown_per_speaker, seed=args.seed)
    if is_finished(args.out, parameters=parameters):
        print(f"{args.command}: {args.out} is already built with these parameters", flush=True)
        return
    background_noise = None
    if args.command == "speech-commands":
        voices, variants = discover_espeak_voices()
        speakers = sample_espeak_speakers(voices=voices, variants=variants, count=args.per_word, seed=args.seed)
        if noise_seconds is not None:
            babble_speakers = sample_espeak_speakers(voices=voices, variants=variants, count=BABBLE_SPEAKERS,
                                                     seed=stable_hash(f"{args.seed}/babble"))
            background_noise = dict(seconds=noise_seconds, seed=args.seed, babble_speakers=babble_speakers)
    else:
        speakers = sample_festival_speakers(voices=discover_festival_voices(), per_voice=args.per_voice,
                                            seed=args.seed)
    build_spoken_corpus(out_dir=args.out, speakers=speakers, words=args.words,
                        unknown_per_speaker=args.unknown_per_speaker, background_noise=background_noise,
                        parameters=parameters, workers=args.workers, apt=apt)


if __name__ == "__main__":
    main()
