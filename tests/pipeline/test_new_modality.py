"""A third modality is one spec and its featurizer: short clips as stacks of frames go through the
pipeline and the trainer's data code, and the model takes them, with nothing else changed."""
import dataclasses
import io

import numpy as np
import pytest

from beam_jobs import preprocess
from beam_jobs.modalities import MODALITIES
from beam_jobs.modalities.config import option, require
from beam_jobs.modalities.errors import InvalidInputError
from beam_jobs.modalities.spec import Modality, ModelInput, PreviewPanel

LABELS = ("falling", "rising")  # sorted, as the vocabulary indexes the class folders


@dataclasses.dataclass(frozen=True)
class FramesConfig:
    frames: int = option(4, "frames kept per clip", flag="clip_frames")
    size: int = option(12, "frame height and width", flag="frame_size")
    max_file_bytes: int = option(1 << 20, "larger clips become error rows", flag="max_frames_bytes")

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """[size, size, frames]: the frames as channels."""
        return (self.size, self.size, self.frames)

    def validate(self) -> "FramesConfig":
        require(self.frames >= 1, "frames", self.frames, ">= 1")
        return self


def featurize_frames(data: bytes, *, config: FramesConfig) -> np.ndarray:
    """A .npy of uint8 [frames, size, size] to uint8 [size, size, frames]."""
    try:
        frames = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as error:
        raise InvalidInputError(f"not a .npy array: {error}") from error
    if frames.dtype != np.uint8 or frames.shape != (config.frames, config.size, config.size):
        raise InvalidInputError(f"expected uint8 {(config.frames, config.size, config.size)}, got "
                                f"{frames.dtype} {frames.shape}")
    return np.ascontiguousarray(frames.transpose(1, 2, 0))


def preview_frames(data: bytes, *, config: FramesConfig) -> list[PreviewPanel]:
    stack = featurize_frames(data, config=config)
    return [PreviewPanel("pixels", f"frame {index}", stack[..., index:index + 1]) for index in range(config.frames)]


FRAMES = Modality(
    name="frames", extensions=(".npy",), config_class=FramesConfig, tensor_dtype="uint8",
    featurize=featurize_frames, preview=preview_frames,
    model_input=ModelInput(name="frames", normalization="unit_range", add_channel_axis=False),
    media=None, title="Clips", nouns=("motion", "motions"), upload=("Upload a .npy", ".npy"))


def clip_bytes(label: str, seed: int) -> bytes:
    """A bright bar moving up or down through 4 frames of 12x12."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 30, (4, 12, 12), dtype=np.uint8)
    start = int(rng.integers(0, 5))
    for index in range(4):
        row = start + (index * 2 if label == "falling" else 6 - index * 2)
        frames[index, row, :] = 250
    buffer = io.BytesIO()
    np.save(buffer, frames)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def frames_registered():
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(MODALITIES, FRAMES.name, FRAMES)
        yield FRAMES


@pytest.fixture(scope="module")
def frames_run(frames_registered, tmp_path_factory, runner_flags):
    root = tmp_path_factory.mktemp("clips")
    for label in LABELS:
        (root / label).mkdir()
        for index in range(20):
            (root / label / f"{index:02d}.npy").write_bytes(clip_bytes(label, seed=index + 100 * len(label)))
    (root / "rising" / "broken.npy").write_bytes(b"not numpy")
    out = tmp_path_factory.mktemp("out")
    summary = preprocess.run([f"--frames_root={root}", f"--output_dir={out}", "--clip_frames=4",
                              *runner_flags["in_memory"]], save_main_session=False)
    return summary, out


def test_the_pipeline_ingests_a_modality_it_was_never_written_for(frames_run):
    summary, out = frames_run
    manifest = summary.manifests["frames"]
    assert (manifest.tensor_dtype, manifest.tensor_shape, manifest.labels) == ("uint8", [12, 12, 4], list(LABELS))
    assert sum(split.num_examples for split in manifest.splits.values()) == 40
    assert [(row["modality"], row["path"].rsplit("/", 1)[-1]) for row in summary.error_rows] == [
        ("frames", "broken.npy")]
    assert manifest.featurizer_config() == FramesConfig()
    assert (out / "frames" / "dataset.json").is_file()


def test_the_trainer_reads_it_and_the_model_takes_it(frames_run):
    from trainer.data import load_manifest, make_dataset
    from trainer.model import build_model

    _, out = frames_run
    manifest = load_manifest(str(out / "frames"))
    batches = list(make_dataset(manifest=manifest, data_dir=str(out / "frames"), splits=["train", "validation",
                                                                                           "test"],
                                batch_size=8, training=False))
    tensors = np.concatenate([tensors.numpy() for tensors, _ in batches])
    assert tensors.shape == (40, 12, 12, 4) and tensors.dtype == np.uint8
    model = build_model(name="seed", modality="frames", shape=manifest.tensor_shape,
                        num_classes=len(manifest.labels), learning_rate=1e-3)
    assert model.predict_on_batch(tensors[:3]).shape == (3, 2)
