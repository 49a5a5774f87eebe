"""TestPipeline tests of the transforms: matching and labelling, featurizing into tagged outputs, sharding."""
import hashlib
import json
import posixpath

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.config import AUDIO_EXTENSIONS, AudioConfig, SplitConfig
from beam_jobs.examples import decode_example
from beam_jobs.examples import encode_example
from beam_jobs.sharding import ShardFile, WriteShards, _key_by_shard, num_shards_for, record_bytes, shard_index
from beam_jobs.transforms import (METRICS_NAMESPACE, ComputeVocabulary, CountFilesPerSplit, EncodedExample,
                                  ErrorRow, FeaturizeFile, InputFile, MatchInputFiles, ReadSplitLists, classify,
                                  class_folder, read_split_lists, relative_to_root, write_error_rows)


@pytest.fixture
def pipeline(runner_flags):
    return BeamTestPipeline(options=PipelineOptions(runner_flags["in_memory"]))


def write(path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_relative_paths_labels_and_kinds():
    assert relative_to_root("/data/speech/yes/a.wav", "/data/speech") == "yes/a.wav"
    assert relative_to_root("gs://bucket/speech/yes/sub/a.wav", "gs://bucket/speech") == "yes/sub/a.wav"
    with pytest.raises(ValueError, match="not under its root"):
        relative_to_root("/data/speech2/yes/a.wav", "/data/speech")
    assert class_folder("yes/sub/a.wav") == "yes" and class_folder("a.wav") is None
    assert classify("yes/a.WAV", extensions=AUDIO_EXTENSIONS) == "input"
    assert classify("_background_noise_/a.wav", extensions=AUDIO_EXTENSIONS) == "skipped"
    assert classify("yes/_old/a.wav", extensions=AUDIO_EXTENSIONS) == "skipped"
    assert classify("validation_list.txt", extensions=AUDIO_EXTENSIONS) == "ignored"


def test_match_input_files_keeps_inputs_of_every_root_and_counts_the_rest(tmp_path, pipeline):
    first, second = tmp_path / "first", tmp_path / "second"
    for relative in ("yes/a.wav", "yes/sub/b.WAV", "no/c.wav", "root.wav", "_background_noise_/n.wav",
                     "yes/_old/d.wav", "README.txt", "yes/notes.txt"):
        write(first / relative, b"x")
    write(second / "up/e.wav", b"xy")

    input_files = pipeline | MatchInputFiles(modality="audio", roots=(str(first), str(second)),
                                             extensions=AUDIO_EXTENSIONS)

    assert_that(input_files, equal_to([
        InputFile("audio", str(first), str(first / "yes/a.wav"), "yes/a.wav", 1),
        InputFile("audio", str(first), str(first / "yes/sub/b.WAV"), "yes/sub/b.WAV", 1),
        InputFile("audio", str(first), str(first / "no/c.wav"), "no/c.wav", 1),
        InputFile("audio", str(first), str(first / "root.wav"), "root.wav", 1),
        InputFile("audio", str(second), str(second / "up/e.wav"), "up/e.wav", 2),
    ]))
    result = pipeline.run()
    counters = {counter.key.metric.name: counter.committed for counter in
                result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]}
    assert counters == {"audio_input_files": 5, "audio_skipped_files": 2, "audio_ignored_files": 2}


def test_vocabulary_indexes_the_sorted_class_folders(pipeline):
    input_files = [InputFile("audio", "/r", f"/r/{relative}", relative, 1)
                   for relative in ("yes/a.wav", "no/b.wav", "yes/c.wav", "up/x/d.wav", "root.wav")]

    vocabulary = pipeline | beam.Create(input_files) | ComputeVocabulary()

    assert_that(vocabulary, equal_to([{"no": 0, "up": 1, "yes": 2}]))
    pipeline.run()


def test_split_lists_are_read_per_root(tmp_path, pipeline):
    with_lists, without_lists = tmp_path / "a", tmp_path / "b"
    write(with_lists / "validation_list.txt", b"yes/1.wav\nno/2.wav\n\n")
    write(with_lists / "testing_list.txt", b"up/3.wav\n")
    without_lists.mkdir()

    split_lists = pipeline | ReadSplitLists(roots=(str(with_lists), str(without_lists)))

    assert_that(split_lists, equal_to([
        (str(with_lists), {"yes/1.wav": "validation", "no/2.wav": "validation", "up/3.wav": "test"}),
        (str(without_lists), {}),
    ]))
    pipeline.run()


def test_a_file_in_two_split_lists_fails_loudly(tmp_path):
    write(tmp_path / "validation_list.txt", b"yes/1.wav\n")
    write(tmp_path / "testing_list.txt", b"yes/1.wav\n")

    with pytest.raises(ValueError, match="yes/1.wav is listed in more than one split list"):
        read_split_lists(str(tmp_path))


def test_featurize_file_sends_good_files_to_examples_and_bad_files_to_errors(
        tmp_path, pipeline, make_sine, make_wav):
    root = str(tmp_path)
    good = make_wav(make_sine(440, rate=16000), rate=16000)
    files = {
        "yes/good.wav": good,
        "no/also_good.wav": make_wav(make_sine(880, rate=8000), rate=8000, encoding="i24"),
        "yes/truncated.wav": good[:1000],
        "no/empty.wav": b"",
        "no/text.wav": b"hello",
        "root.wav": good,
        "maybe/unknown_label.wav": good,
    }
    input_files = [InputFile("audio", root, write(tmp_path / relative, data), relative, len(data))
                   for relative, data in files.items()]
    # The listing says this one is huge: it must be rejected without being read.
    input_files.append(InputFile("audio", root, str(tmp_path / "yes/good.wav"), "yes/good.wav", 10**12))
    config = AudioConfig(max_file_bytes=10**6)

    vocabulary = pipeline | "Vocabulary" >> beam.Create([{"no": 0, "yes": 1}])
    split_lists = pipeline | "SplitLists" >> beam.Create([(root, {"no/also_good.wav": "test"})])
    outputs = (pipeline
               | beam.Create(input_files)
               | beam.ParDo(FeaturizeFile(modality="audio", config=config, split_config=SplitConfig()),
                            vocabulary=beam.pvalue.AsSingleton(vocabulary),
                            split_lists=beam.pvalue.AsDict(split_lists)
                            ).with_outputs(FeaturizeFile.ERRORS, main="examples"))

    def check_examples(examples):
        decoded = [(decode_example(e.serialized), e) for e in sorted(examples, key=lambda e: e.relative_path)]
        assert [(e.relative_path, e.label_name, e.example_id) for _, e in decoded] == [
            ("no/also_good.wav", "no", hashlib.sha256(files["no/also_good.wav"]).hexdigest()),
            ("yes/good.wav", "yes", hashlib.sha256(good).hexdigest())]
        for fields, example in decoded:
            assert (fields["label"], fields["split"], fields["shape"]) == (
                {"no": 0, "yes": 1}[example.label_name], example.split, list(config.feature_shape))
        assert decoded[0][1].split == "test"  # from the split list

    def check_errors(rows):
        reasons = {posixpath.basename(row.path): row.reason for row in rows}
        assert len(rows) == 6 and all(row.modality == "audio" and row.root == root for row in rows)
        for name, expected in {"truncated.wav": "truncated", "empty.wav": "empty", "text.wav": "not a readable",
                               "root.wav": "directly in the input root", "unknown_label.wav": "not in the fixed",
                               "good.wav": "over the limit"}.items():
            assert expected in reasons[name], f"{name}: {reasons[name]!r} lacks {expected!r}"

    assert_that(outputs.examples, check_examples, label="CheckExamples")
    assert_that(outputs[FeaturizeFile.ERRORS], check_errors, label="CheckErrors")
    pipeline.run()


def example(split: str, index: int, size: int = 100) -> EncodedExample:
    example_id = hashlib.sha256(f"{split}{index}".encode()).hexdigest()
    serialized = example_id.encode() + b"s" * (size - len(example_id))  # distinct records, `size` bytes each
    return EncodedExample(split, f"label{index % 2}", example_id, f"label{index % 2}/{index}.wav", serialized)


def test_shard_count_and_index():
    assert num_shards_for(0, shard_bytes=100, fixed_num_shards=None) == 1
    assert num_shards_for(250, shard_bytes=100, fixed_num_shards=None) == 3
    assert num_shards_for(250, shard_bytes=100, fixed_num_shards=7) == 7
    indices = [shard_index(example("train", index).example_id, num_shards=4) for index in range(200)]
    assert set(indices) == {0, 1, 2, 3}
    key, value = _key_by_shard(example("train", 5), {"train": 2}, record_bytes=116, shard_bytes=116,
                               fixed_num_shards=None)
    assert key == ("train", shard_index(example("train", 5).example_id, num_shards=2))
    assert value[0] == example("train", 5).example_id  # the id leads, so sorting orders by id


def test_record_bytes_is_the_size_of_a_framed_record():
    tensor = np.zeros((28, 28, 1), dtype=np.uint8)
    real = encode_example(tensor=tensor, label=3, label_name="sneaker", modality="image", example_id="f" * 64,
                          path="sneaker/train_00017.png", split="train")

    assert abs(record_bytes("image", feature_shape=(28, 28, 1)) - (len(real) + 16)) < 64


def test_files_are_counted_per_split_from_their_paths(pipeline):
    input_files = [InputFile("audio", "/r", f"/r/yes/{index}.wav", f"yes/{index}.wav", 1) for index in range(50)]
    split_lists = pipeline | "SplitLists" >> beam.Create([("/r", {"yes/0.wav": "validation"})])

    counts = (pipeline
              | beam.Create(input_files)
              | CountFilesPerSplit(split_config=SplitConfig(test_percent=50), split_lists=split_lists))

    def check(pairs):
        assert dict(pairs)["validation"] == 1 and sum(dict(pairs).values()) == 50
        assert set(dict(pairs)) == {"train", "validation", "test"}

    assert_that(counts, check)
    pipeline.run()


def test_write_shards_sorts_each_shard_by_id_and_counts_its_labels(tmp_path, pipeline):
    examples = [example(split, index) for split in ("train", "test") for index in range(20)]

    files_per_split = pipeline | "FilesPerSplit" >> beam.Create([("train", 20), ("test", 20)])
    shard_files = (pipeline
                   | beam.Create(examples)
                   | WriteShards(dataset_dir=str(tmp_path), files_per_split=files_per_split, record_bytes=116,
                                 shard_bytes=10**9, fixed_num_shards=3, compression=None))

    def check_shards(shards):
        assert sum(shard.num_examples for shard in shards) == len(examples)
        for shard in shards:
            in_shard = sorted((e for e in examples if e.split == shard.split
                               and shard_index(e.example_id, num_shards=3) == shard.index),
                              key=lambda e: e.example_id)
            assert isinstance(shard, ShardFile)
            assert read_framed_records(shard.temp_path) == [e.serialized for e in in_shard]
            assert shard.num_examples == len(in_shard)
            assert shard.label_counts == count_labels(in_shard)

    assert_that(shard_files, check_shards)
    pipeline.run()


def read_framed_records(path) -> list[bytes]:
    data, records, offset = open(path, "rb").read(), [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 8], "little")
        records.append(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
    return records


def count_labels(examples) -> dict[str, int]:
    counts = {}
    for e in examples:
        counts[e.label_name] = counts.get(e.label_name, 0) + 1
    return counts


def test_error_rows_file_is_sorted_and_exists_when_empty(tmp_path):
    rows = [ErrorRow("/r/b.png", "/r", "image", "corrupt"), ErrorRow("/r/a.wav", "/r", "audio", "empty file")]

    write_error_rows(rows, path=str(tmp_path / "errors.jsonl"))
    write_error_rows([], path=str(tmp_path / "none.jsonl"))

    lines = (tmp_path / "errors.jsonl").read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["/r/a.wav", "/r/b.png"]
    assert json.loads(lines[0]) == {"path": "/r/a.wav", "root": "/r", "modality": "audio", "reason": "empty file"}
    assert (tmp_path / "none.jsonl").read_text() == ""
    assert not list(tmp_path.glob("*.tmp"))


def test_shards_are_byte_identical_whatever_the_input_order(tmp_path, pipeline):
    examples = [example("train", index) for index in range(30)]
    for name, ordered in (("forward", examples), ("backward", examples[::-1])):
        p = BeamTestPipeline(options=pipeline.options)
        files_per_split = p | "FilesPerSplit" >> beam.Create([("train", 30)])
        _ = (p | beam.Create(ordered)
             | WriteShards(dataset_dir=str(tmp_path / name), files_per_split=files_per_split, record_bytes=116,
                           shard_bytes=1000, fixed_num_shards=None, compression=None))
        p.run()
    forward = sorted(path.name for path in (tmp_path / "forward").iterdir())
    assert forward == sorted(path.name for path in (tmp_path / "backward").iterdir())
    assert len(forward) == num_shards_for(30 * 116, shard_bytes=1000, fixed_num_shards=None)
    for name in forward:
        assert (tmp_path / "forward" / name).read_bytes() == (tmp_path / "backward" / name).read_bytes(), name
