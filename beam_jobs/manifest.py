"""The dataset manifest (`dataset.json`): everything a reader needs, in one file.

Written last by the pipeline, so a reader that finds it finds a complete
dataset. Pure Python: the trainer, `predict`, the app and the report read it
too, and featurize a raw file exactly as the pipeline did through `featurize`.
"""
import dataclasses
import json
from typing import Any

import numpy as np

from beam_jobs.modalities import get as get_modality
from beam_jobs.modality import Modality, PreviewPanel


@dataclasses.dataclass
class ShardInfo:
    path: str  # relative to the manifest's folder
    num_examples: int
    num_bytes: int | None = None  # as stored; None in manifests written before it was recorded
    sha256: str | None = None  # hex SHA-256 of the stored bytes; likewise


@dataclasses.dataclass
class SplitInfo:
    num_examples: int
    label_counts: dict[str, int]
    shards: list[ShardInfo]


@dataclasses.dataclass
class DatasetManifest:
    modality: str  # a name in beam_jobs.modalities.MODALITIES
    labels: list[str]  # the label vocabulary; a record's `label` indexes it
    tensor_dtype: str  # numpy name of the stored tensor's dtype
    tensor_shape: list[int]
    featurization: dict[str, Any]  # the modality's config fields
    splits: dict[str, SplitInfo]
    features: list[dict]  # beam_jobs.features.describe()
    compression: str | None  # None or "GZIP"
    input_roots: list[str]
    split_config: dict[str, float]
    num_errors: int
    pipeline_version: str
    created: str  # ISO 8601 UTC time of the run

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DatasetManifest":
        fields = json.loads(text)
        fields["splits"] = {
            name: SplitInfo(num_examples=split["num_examples"], label_counts=split["label_counts"],
                            shards=[ShardInfo(**shard) for shard in split["shards"]])
            for name, split in fields["splits"].items()}
        return cls(**fields)

    @property
    def spec(self) -> Modality:
        return get_modality(self.modality)

    def featurizer_config(self):
        """The modality's featurization config the dataset was built with."""
        return self.spec.config_class(**self.featurization)

    def featurize(self, data: bytes) -> np.ndarray:
        """Raw file bytes to the stored tensor, exactly as the pipeline computed it.

        Raises beam_jobs.errors.InvalidInputError for a file it cannot use.
        """
        return self.spec.featurize(data, config=self.featurizer_config())

    def preview(self, data: bytes) -> list[PreviewPanel]:
        """What a person is shown of a raw file: pictures of what the model gets. Raises InvalidInputError."""
        return self.spec.preview(data, config=self.featurizer_config())
