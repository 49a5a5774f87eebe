"""TestPipeline tests of the transforms: matching and labelling, assigning shards, featurizing into shards."""
import collections
import gzip
import hashlib
import json
import math
import posixpath

import apache_beam as beam
import numpy as np
import pytest
from PIL import Image
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.assign import AssignShards, ReadSplitLists, _key_by_part, read_split_lists_of_roots
from beam_jobs.audio import AUDIO, AudioConfig
from beam_jobs.config import SplitConfig
from beam_jobs.counters import METRICS_NAMESPACE
from beam_jobs.error_rows import write_error_rows
from beam_jobs.examples import encode_example
from beam_jobs.featurize import FeaturizePart
from beam_jobs.image import IMAGE, ImageConfig
from beam_jobs.input_files import InputFile, InputFileCoder, MatchInputFiles, read_at_most
from beam_jobs.input_tree import class_folder, classify, join_root, relative_to_root
from beam_jobs.labels import ComputeVocabulary
from beam_jobs.records import ErrorRow
from beam_jobs.sharding import (ShardPart, WriteShards, num_parts_for, num_shards_for, part_index,
                                record_bytes, shard_index)
from beam_jobs.splits import SplitRule

AUDIO_EXTENSIONS = AUDIO.extensions


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
    for path, root in (("/data/speech/yes/a.wav", "/data/speech"), ("gs://b/s/yes/a.wav", "gs://b/s/")):
        assert join_root(root, relative_to_root(path, root)) == path
    assert InputFile(1, "yes/a.wav", 3).path(("/r", "gs://b/s")) == "gs://b/s/yes/a.wav"


def test_read_at_most_reads_whole_files_and_stops_at_the_limit(tmp_path):
    path = tmp_path / "a.bin"
    data = bytes(range(256)) * 40  # 10240 bytes
    path.write_bytes(data)
    # As listed, smaller than listed (shrunk since), larger than listed (grew since), empty.
    for expected_bytes in (len(data), len(data) + 500, 10, 0):
        assert read_at_most(str(path), limit=10**6, expected_bytes=expected_bytes) == data, expected_bytes
    # The limit holds however wrong the listed size is, so the caller sees a file over the limit.
    for expected_bytes in (len(data), 10):
        assert read_at_most(str(path), limit=5001, expected_bytes=expected_bytes) == data[:5001]
    path.write_bytes(b"")
    assert read_at_most(str(path), limit=100, expected_bytes=0) == b""


def test_file_references_are_shuffled_with_a_compact_coder(pipeline):
    split_lists = pipeline | "SplitLists" >> beam.Create([{}])
    keyed = (pipeline
             | beam.Create([InputFile(0, "yes/a.wav", 1)])
             | AssignShards(split_config=SplitConfig(), split_lists=split_lists, record_bytes=100,
                            shard_bytes=1000, fixed_num_shards=None))
    coder = beam.coders.registry.get_coder(keyed.element_type)
    assert isinstance(coder, beam.coders.TupleCoder), coder
    assert isinstance(coder.coders()[1], InputFileCoder), coder
    # The grouping key (split, shard, part) and the reference: root index, relative path, size; nothing pickled.
    element = (("validation", 0, 0), InputFile(1, "yes/a_nohash_0.wav", 32044))
    decoded = coder.decode(coder.encode(element))
    assert decoded == element and type(decoded[1]) is InputFile
    assert decoded[1].path(("/data/other", "/data/speech")) == "/data/speech/yes/a_nohash_0.wav"
    # The two strings, their two length bytes, and varints: shard 0, part 0, root 1, size 32044 (3 bytes).
    assert len(coder.encode(element)) == len("validation") + len("yes/a_nohash_0.wav") + 8


def test_match_input_files_keeps_inputs_of_every_root_and_counts_the_rest(tmp_path, pipeline):
    first, second = tmp_path / "first", tmp_path / "second"
    for relative in ("yes/a.wav", "yes/sub/b.WAV", "no/c.wav", "root.wav", "_background_noise_/n.wav",
                     "yes/_old/d.wav", "README.txt", "yes/notes.txt"):
        write(first / relative, b"x")
    write(second / "up/e.wav", b"xy")

    input_files = pipeline | MatchInputFiles(modality="audio", roots=(str(first), str(second)),
                                             extensions=AUDIO_EXTENSIONS)

    assert_that(input_files, equal_to([
        InputFile(0, "yes/a.wav", 1),
        InputFile(0, "yes/sub/b.WAV", 1),
        InputFile(0, "no/c.wav", 1),
        InputFile(0, "root.wav", 1),
        InputFile(1, "up/e.wav", 2),
    ]))
    result = pipeline.run()
    counters = {counter.key.metric.name: counter.committed for counter in
                result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]}
    assert counters == {"audio_input_files": 5, "audio_skipped_files": 2, "audio_ignored_files": 2}


def test_vocabulary_indexes_the_sorted_class_folders(pipeline):
    input_files = [InputFile(0, relative, 1)
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

    assert_that(split_lists, equal_to([{
        0: {"yes/1.wav": "validation", "no/2.wav": "validation", "up/3.wav": "test"},
        1: {},
    }]))
    pipeline.run()


def test_a_file_in_two_split_lists_fails_loudly(tmp_path):
    write(tmp_path / "validation_list.txt", b"yes/1.wav\n")
    write(tmp_path / "testing_list.txt", b"yes/1.wav\n")

    with pytest.raises(ValueError, match="yes/1.wav is listed in more than one split list"):
        read_split_lists_of_roots((str(tmp_path),))


def in_path_hash_order(paths) -> list[str]:
    return sorted(paths, key=lambda path: hashlib.sha256(path.encode()).digest())


def test_featurize_part_writes_good_files_in_path_hash_order_and_sends_bad_files_to_errors(
        tmp_path, pipeline, make_sine, make_wav, example_decoder):
    root, out = str(tmp_path / "in"), tmp_path / "out"
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
    for relative, data in files.items():
        write(tmp_path / "in" / relative, data)
    input_files = [InputFile(1, relative, len(data)) for relative, data in files.items()]
    # The listing says this one is huge: it must be rejected without being read.
    input_files.append(InputFile(1, "yes/good.wav", 10**12))
    config = AudioConfig(max_file_bytes=10**6)
    bad_only = [input_file for input_file in input_files if input_file.relative_path == "no/empty.wav"]

    vocabulary = pipeline | "Vocabulary" >> beam.Create([{"no": 0, "yes": 1}])
    outputs = (pipeline
               | beam.Create([(("test", 2, 1), input_files), (("train", 0, 0), bad_only)])
               | beam.ParDo(FeaturizePart(spec=AUDIO, config=config, dataset_dir=str(out),
                                          roots=(str(tmp_path / "elsewhere"), root),
                                          progress_dir=str(tmp_path / "progress")),
                            vocabulary=beam.pvalue.AsSingleton(vocabulary)
                            ).with_outputs(FeaturizePart.ERRORS, main="shard_parts"))

    def check_shard_parts(shard_parts):
        [shard_part] = shard_parts  # the part whose only file fails writes no file
        assert isinstance(shard_part, ShardPart)
        assert (shard_part.split, shard_part.index, shard_part.part, shard_part.num_examples,
                shard_part.label_counts) == ("test", 2, 1, 2, {"no": 1, "yes": 1})
        decoded = [example_decoder(record) for record in read_framed_records(shard_part.temp_path)]
        assert [fields["path"] for fields in decoded] == in_path_hash_order(["no/also_good.wav", "yes/good.wav"])
        for fields in decoded:
            label_name = fields["path"].split("/")[0]
            assert (fields["id"], fields["label_name"], fields["label"], fields["split"], fields["shape"]) == (
                hashlib.sha256(files[fields["path"]]).hexdigest(), label_name, {"no": 0, "yes": 1}[label_name],
                "test", list(config.feature_shape))

    def check_errors(rows):
        reasons = {posixpath.basename(row.path): row.reason for row in rows}
        assert len(rows) == 7 and all(row.modality == "audio" and row.root == root for row in rows)
        for name, expected in {"truncated.wav": "truncated", "empty.wav": "empty", "text.wav": "not a readable",
                               "root.wav": "directly in the input root", "unknown_label.wav": "not in the fixed",
                               "good.wav": "over the limit"}.items():
            assert expected in reasons[name], f"{name}: {reasons[name]!r} lacks {expected!r}"

    assert_that(outputs.shard_parts, check_shard_parts, label="CheckShardParts")
    assert_that(outputs[FeaturizePart.ERRORS], check_errors, label="CheckErrors")
    pipeline.run()
    assert [path.name for path in out.iterdir()] == [".tmp-test-00002-part-00001.tfrecord"]


def test_shard_and_part_counts_and_indices():
    assert num_shards_for(0, shard_bytes=100, fixed_num_shards=None) == 1
    assert num_shards_for(250, shard_bytes=100, fixed_num_shards=None) == 3
    assert num_shards_for(250, shard_bytes=100, fixed_num_shards=7) == 7
    assert num_parts_for(0, record_bytes=1, num_shards=3, part_bytes=10, part_files=10) == 1
    assert num_parts_for(250, record_bytes=1, num_shards=3, part_bytes=10, part_files=1000) == 9
    # Small records: the file cap, not the byte cap, sets the number of parts.
    assert num_parts_for(250, record_bytes=1, num_shards=3, part_bytes=1000, part_files=10) == 9
    assert num_parts_for(250, record_bytes=1, num_shards=3, part_bytes=1000, part_files=1000) == 1
    paths = [f"label{index % 2}/{index}.wav" for index in range(200)]
    assert set(shard_index(path, num_shards=4) for path in paths) == {0, 1, 2, 3}
    assert set(part_index(path, num_parts=5) for path in paths) == {0, 1, 2, 3, 4}
    hash_prefix = int.from_bytes(hashlib.sha256(b"yes/a.wav").digest()[:8], "big")
    assert shard_index("yes/a.wav", num_shards=7) == hash_prefix % 7
    # Parts are ranges of the hash, so concatenating them in order keeps a shard in path-hash order.
    parts_in_order = [part_index(path, num_parts=5) for path in in_path_hash_order(paths)]
    assert parts_in_order == sorted(parts_in_order)
    input_file = InputFile(0, "yes/a.wav", 1)
    key, value = _key_by_part(("train", input_file), {"train": 4}, record_bytes=100, shard_bytes=200,
                              fixed_num_shards=None, part_bytes=50, part_files=1000)
    assert (key, value) == (("train", hash_prefix % 2, part_index("yes/a.wav", num_parts=4)), input_file)
    key, _ = _key_by_part(("train", input_file), {"train": 4}, record_bytes=1, shard_bytes=200,
                          fixed_num_shards=None, part_bytes=50, part_files=1)
    assert key == ("train", 0, part_index("yes/a.wav", num_parts=4)), "one file per part"


def test_record_bytes_is_the_size_of_a_framed_record():
    tensor = np.zeros((28, 28, 1), dtype=np.uint8)
    real = encode_example(tensor=tensor, label=3, label_name="sneaker", modality="image", tensor_dtype="uint8",
                          example_id="f" * 64,
                          path="sneaker/train_00017.png", split="train")

    assert abs(record_bytes(IMAGE, feature_shape=(28, 28, 1)) - (len(real) + 16)) < 64


def test_shards_are_assigned_from_the_paths_and_the_number_of_files_per_split(pipeline):
    input_files = [InputFile(0, f"yes/{index}.wav", 1) for index in range(50)]
    listed = {"yes/0.wav": "validation"}
    split_config = SplitConfig(test_percent=50)
    split_lists = pipeline | "SplitLists" >> beam.Create([{0: listed}])

    keyed = (pipeline
             | beam.Create(input_files)
             | AssignShards(split_config=split_config, split_lists=split_lists, record_bytes=100,
                            shard_bytes=1000, fixed_num_shards=None, part_bytes=300))

    def check(pairs):
        assert sorted(input_file for _, input_file in pairs) == sorted(input_files)
        splits = {input_file.relative_path: split for (split, _, _), input_file in pairs}
        assert splits == {path: SplitRule(config=split_config, listed=listed).split_of(path) for path in splits}
        files_per_split = collections.Counter(splits.values())
        assert files_per_split["validation"] == 1 and set(files_per_split) == {"train", "validation", "test"}
        for (split, index, part), input_file in pairs:
            num_shards = math.ceil(files_per_split[split] * 100 / 1000)
            num_parts = math.ceil(files_per_split[split] * 100 / num_shards / 300)
            assert index == shard_index(input_file.relative_path, num_shards=num_shards), input_file
            assert part == part_index(input_file.relative_path, num_parts=num_parts), input_file
        assert len({key[:2] for key, _ in pairs if key[0] == "test"}) > 1, "the test split should span shards"
        assert len({key for key, _ in pairs if key[:2] == ("test", 0)}) > 1, "a test shard should span parts"

    assert_that(keyed, check)
    pipeline.run()


def read_framed_records(path) -> list[bytes]:
    data, records, offset = open(path, "rb").read(), [], 0
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 8], "little")
        records.append(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
    return records


def test_error_rows_file_is_sorted_and_exists_when_empty(tmp_path):
    rows = [ErrorRow("/r/b.png", "/r", "image", "corrupt"), ErrorRow("/r/a.wav", "/r", "audio", "empty file")]

    write_error_rows(rows, path=str(tmp_path / "errors.jsonl"))
    write_error_rows([], path=str(tmp_path / "none.jsonl"))

    lines = (tmp_path / "errors.jsonl").read_text().splitlines()
    assert [json.loads(line)["path"] for line in lines] == ["/r/a.wav", "/r/b.png"]
    assert json.loads(lines[0]) == {"path": "/r/a.wav", "root": "/r", "modality": "audio", "reason": "empty file"}
    assert (tmp_path / "none.jsonl").read_text() == ""
    assert not list(tmp_path.glob("*.tmp"))


def test_shards_are_byte_identical_whatever_the_input_order_and_the_number_of_parts(
        tmp_path, pipeline, make_image, example_decoder):
    rng = np.random.default_rng(3)
    input_files = []
    for index in range(30):
        relative = f"label{index % 3}/{index}.png"
        data = make_image(Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)), "PNG")
        write(tmp_path / relative, data)
        input_files.append(InputFile(0, relative, len(data)))
    # 30 files of 1000 bytes in one shard: parts of 10**9 bytes make one part, parts of 8000 bytes four.
    runs = {"forward": (input_files, 10**9), "backward": (input_files[::-1], 10**9), "parts": (input_files, 8000)}
    for name, (ordered, part_bytes) in runs.items():
        p = BeamTestPipeline(options=pipeline.options)
        vocabulary = p | "Vocabulary" >> beam.Create([{"label0": 0, "label1": 1, "label2": 2}])
        split_lists = p | "SplitLists" >> beam.Create([{}])
        shard_files = (p
                       | beam.Create(ordered)
                       | AssignShards(split_config=SplitConfig(validation_percent=0, test_percent=0),
                                      split_lists=split_lists, record_bytes=1000, shard_bytes=10**9,
                                      fixed_num_shards=None, part_bytes=part_bytes)
                       | beam.GroupByKey()
                       | beam.ParDo(FeaturizePart(spec=IMAGE, config=ImageConfig(),
                                                  dataset_dir=str(tmp_path / name), roots=(str(tmp_path),),
                                                  progress_dir=str(tmp_path / "progress")),
                                    vocabulary=beam.pvalue.AsSingleton(vocabulary))
                       | WriteShards(dataset_dir=str(tmp_path / name), compression=None))
        assert_that(shard_files, checked_shard_files([("train", 0, str(tmp_path / name / ".tmp-train-00000.tfrecord"),
                                                       30, {"label0": 10, "label1": 10, "label2": 10})]))
        p.run()
    assert len(list((tmp_path / "parts").glob(".tmp-train-00000-part-*.tfrecord"))) == 4
    shard_name = ".tmp-train-00000.tfrecord"
    shard = (tmp_path / "forward" / shard_name).read_bytes()
    assert (tmp_path / "backward" / shard_name).read_bytes() == shard == (tmp_path / "parts" / shard_name).read_bytes()
    paths = [example_decoder(record)["path"] for record in read_framed_records(tmp_path / "parts" / shard_name)]
    assert paths == in_path_hash_order(f.relative_path for f in input_files)


def test_write_shards_concatenates_parts_in_order_and_gzips(tmp_path, pipeline):
    parts = []
    for part, records in enumerate(([b"a", b"bb"], [b"ccc"], [b"dddd", b"e"])):
        temp_path = tmp_path / f"part{part}"
        with open(temp_path, "wb") as handle:
            for record in records:
                _TFRecordUtil.write_record(handle, record)
        parts.append(ShardPart("train", 3, part, str(temp_path), len(records), {"x": len(records) - 1, "y": 1}))

    shard_files = (pipeline
                   | beam.Create(parts[::-1])
                   | WriteShards(dataset_dir=str(tmp_path / "out"), compression="GZIP"))

    temp_path = str(tmp_path / "out" / ".tmp-train-00003.tfrecord.gz")
    assert_that(shard_files, checked_shard_files([("train", 3, temp_path, 5, {"x": 2, "y": 3})]))
    pipeline.run()
    unpacked = tmp_path / "unpacked"
    unpacked.write_bytes(gzip.decompress(open(temp_path, "rb").read()))
    assert read_framed_records(unpacked) == [b"a", b"bb", b"ccc", b"dddd", b"e"]


def test_write_shards_refuses_a_shard_that_holds_fewer_records_than_its_parts_claim(tmp_path, pipeline):
    temp_path = tmp_path / "part0"
    with open(temp_path, "wb") as handle:
        _TFRecordUtil.write_record(handle, b"only one")
    # What a runner that loses part of a write, or runs a bundle twice over one file, leaves behind.
    claimed = ShardPart("train", 0, 0, str(temp_path), 2, {"x": 2})

    _ = pipeline | beam.Create([claimed]) | WriteShards(dataset_dir=str(tmp_path / "out"), compression=None)

    with pytest.raises(Exception, match="holds 1 intact records where its parts wrote 2"):
        pipeline.run()


def checked_shard_files(expected: list[tuple]):
    """A matcher: ShardFiles with these first five fields, whose size and SHA-256 are those of their file."""
    def check(shard_files):
        assert sorted(tuple(shard_file[:5]) for shard_file in shard_files) == sorted(expected)
        for shard_file in shard_files:
            data = open(shard_file.temp_path, "rb").read()
            assert (shard_file.num_bytes, shard_file.sha256) == (len(data), hashlib.sha256(data).hexdigest())

    return check
