"""Tests of the pipeline's parts: listing and labelling, assigning shards, featurizing into shards (TestPipeline)."""
import collections
import gzip
import hashlib
import json
import math
import pathlib
import posixpath

import apache_beam as beam
import numpy as np
import pytest
from PIL import Image
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that

from beam_jobs.inputs.labels import extend_labels, index_labels
from beam_jobs.inputs.reading import read_at_most, read_text_if_present
from beam_jobs.inputs.splits import SplitRule
from beam_jobs.inputs.tree import class_folder, classify, join_root, read_split_lists, relative_to_root
from beam_jobs.modalities.audio import AUDIO, AudioConfig
from beam_jobs.modalities.config import SplitConfig
from beam_jobs.modalities.image import IMAGE, ImageConfig
from beam_jobs.pipeline.assign import group_by_part, part_of
from beam_jobs.pipeline.featurize import FeaturizePart, SplitOutputs
from beam_jobs.pipeline.plan import list_input_files
from beam_jobs.pipeline.sharding import (PartWriter, ShardPart, WriteShards, num_parts_for, num_shards_for, part_index,
                                         read_shard_rows, record_bytes, shard_index)
from beam_jobs.records.error_rows import write_error_rows
from beam_jobs.records.examples import encode_example
from beam_jobs.records.from_file import ErrorRow
from beam_jobs.runners.default import runs_in_process

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
    assert classify("_background_noise_/a.wav", extensions=AUDIO_EXTENSIONS, noise=True) == "noise"
    assert classify("_background_noise_/old/a.wav", extensions=AUDIO_EXTENSIONS, noise=True) == "skipped"
    assert classify("_background_noise_/notes.txt", extensions=AUDIO_EXTENSIONS, noise=True) == "skipped"
    assert classify("_silence_/a.wav", extensions=AUDIO_EXTENSIONS) == "input"
    assert classify("_unknown_/learn/a.wav", extensions=AUDIO_EXTENSIONS) == "input"
    assert classify("_silence_/_old/a.wav", extensions=AUDIO_EXTENSIONS) == "skipped"
    assert classify("validation_list.txt", extensions=AUDIO_EXTENSIONS) == "ignored"
    for path, root in (("/data/speech/yes/a.wav", "/data/speech"), ("gs://b/s/yes/a.wav", "gs://b/s/")):
        assert join_root(root, relative_to_root(path, root)) == path


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


def work_item(root: int, path: str, size: int, split: str = "train", **extra) -> dict:
    """A work item of the plan, as the pipeline reads it."""
    return {"root": root, "path": path, "size": size, "mtime": 1.5, "split": split, **extra}


def test_listing_keeps_inputs_of_every_root_gives_splits_and_counts_the_rest(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for relative in ("yes/a.wav", "yes/sub/b.WAV", "no/c.wav", "root.wav", "_background_noise_/n.wav",
                     "yes/_old/d.wav", "README.txt", "yes/notes.txt"):
        write(first / relative, b"x")
    write(first / "validation_list.txt", b"yes/a.wav\n\n")
    write(first / "testing_list.txt", b"no/c.wav\n")
    write(second / "up/e.wav", b"xy")
    split_config = SplitConfig()

    listed, counts = list_input_files((str(first), str(second)), extensions=AUDIO_EXTENSIONS,
                                      split_config=split_config)

    hashed = SplitRule(config=split_config, listed={})
    assert sorted((f.root_index, f.relative_path, f.size_bytes, f.split) for f in listed) == sorted([
        (0, "yes/a.wav", 1, "validation"),  # the lists of the file's own root decide
        (0, "yes/sub/b.WAV", 1, "train"),  # a root with lists: files in none are train
        (0, "no/c.wav", 1, "test"),
        (0, "root.wav", 1, "train"),
        (1, "up/e.wav", 2, hashed.split_of("up/e.wav")),  # a root without lists: hash bands
    ])
    assert all(f.mtime == (first if f.root_index == 0 else second).joinpath(f.relative_path).stat().st_mtime
               for f in listed)
    assert counts == {"input_files": 5, "skipped_files": 2, "ignored_files": 4}


def test_vocabulary_indexes_the_sorted_class_folders_and_only_grows():
    assert index_labels(extend_labels((), {"yes", "no", "up"})) == {"no": 0, "up": 1, "yes": 2}
    # A re-ingest keeps the labels it had at their indices, even one without files, and appends new ones.
    assert extend_labels(("yes", "no"), {"up", "yes", "down"}) == ["yes", "no", "down", "up"]


def test_a_file_in_two_split_lists_fails_loudly(tmp_path):
    write(tmp_path / "validation_list.txt", b"yes/1.wav\n")
    write(tmp_path / "testing_list.txt", b"yes/1.wav\n")

    with pytest.raises(ValueError, match="yes/1.wav is listed in more than one split list"):
        read_split_lists(str(tmp_path), read_text=read_text_if_present)


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
    items = [work_item(1, relative, len(data), "test") for relative, data in files.items()]
    # The listing says this one is huge: it must be rejected without being read.
    items.append(work_item(1, "yes/good.wav", 10**12, "test"))
    # An error carried from an earlier span: its file is not read again.
    items.append(work_item(1, "no/gone.wav", 7, "test", error="carried reason"))
    config = AudioConfig(max_file_bytes=10**6)
    bad_only = [work_item(1, "no/empty.wav", 0)]

    shard_parts, error_rows = (
        pipeline
        | beam.Create([(("test", 2, 1), items), (("train", 0, 0), bad_only)])
        | beam.ParDo(FeaturizePart(spec=AUDIO, config=config, dataset_dir=str(out), temp_dir=str(out / "tmp"),
                                   roots=(str(tmp_path / "elsewhere"), root), vocabulary={"no": 0, "yes": 1},
                                   progress_dir=str(tmp_path / "progress")))
        | SplitOutputs())

    def check_shard_parts(shard_parts):
        [shard_part] = shard_parts  # the part whose only file fails writes no file
        assert isinstance(shard_part, ShardPart)
        assert (shard_part.split, shard_part.index, shard_part.part, shard_part.num_examples,
                shard_part.label_counts) == ("test", 2, 1, 2, {"no": 1, "yes": 1})
        records = read_framed_records(shard_part.temp_path)
        decoded = [example_decoder(record) for record in records]
        assert [fields["path"] for fields in decoded] == in_path_hash_order(["no/also_good.wav", "yes/good.wav"])
        # Each record's row: its file, label, where its frame starts in the part and its length.
        assert [row[:6] for row in shard_part.rows] == [
            (1, path, len(files[path]), 1.5, "test", path.split("/")[0]) for path in in_path_hash_order(
                ["no/also_good.wav", "yes/good.wav"])]
        assert [row[6:] for row in shard_part.rows] == [(0, len(records[0])), (len(records[0]) + 16, len(records[1]))]
        assert shard_part.num_bytes == sum(len(record) + 16 for record in records)
        for fields in decoded:
            label_name = fields["path"].split("/")[0]
            assert (fields["id"], fields["label_name"], fields["label"], fields["split"], fields["shape"]) == (
                hashlib.sha256(files[fields["path"]]).hexdigest(), label_name, {"no": 0, "yes": 1}[label_name],
                "test", list(config.feature_shape))

    def check_errors(lines):
        rows = [json.loads(line) for line in lines]
        reasons = {posixpath.basename(row["path"]): row["reason"] for row in rows}
        assert len(rows) == 8 and all(row["root"] == 1 and row["mtime"] == 1.5 for row in rows)
        for name, expected in {"truncated.wav": "truncated", "empty.wav": "empty", "text.wav": "not a readable",
                               "root.wav": "directly in the input root", "unknown_label.wav": "not in the fixed",
                               "good.wav": "over the limit", "gone.wav": "carried reason"}.items():
            assert expected in reasons[name], f"{name}: {reasons[name]!r} lacks {expected!r}"

    assert_that(shard_parts, check_shard_parts, label="CheckShardParts")
    assert_that(error_rows, check_errors, label="CheckErrors")
    pipeline.run()
    [part_file] = (out / "tmp").iterdir()
    assert part_file.name.startswith("part-test-00002-00001-"), part_file.name


def test_featurize_part_copies_records_of_earlier_spans_by_offset_and_checks_them(tmp_path, pipeline):
    dataset = tmp_path / "dataset"
    records = [b"first record", b"second", b"third one"]
    with PartWriter(temp_dir=str(dataset / "spans" / "old"), split="train", index=0, part=0) as writer:
        for index, record in enumerate(records):
            writer.write(record, label_name="yes", file_row=(0, f"yes/{index}.wav", 5, 1.5, "train"))
    old_shard = pathlib.Path(writer.shard_part.temp_path)
    shard = f"spans/old/{old_shard.name}"
    items = [work_item(0, f"yes/{index}.wav", 5, copy={"shard": shard, "offset": offset, "length": length,
                                                          "label": "yes"})
             for index, (*_, offset, length) in enumerate(writer.shard_part.rows)]

    parts = (pipeline
             | beam.Create([(("train", 0, 0), items)])
             | beam.ParDo(FeaturizePart(spec=AUDIO, config=AudioConfig(), dataset_dir=str(dataset),
                                        temp_dir=str(tmp_path / "tmp"), roots=(str(tmp_path / "nowhere"),),
                                        vocabulary={"yes": 0}, progress_dir=str(tmp_path / "progress"))))

    def check(shard_parts):
        [part] = shard_parts
        assert sorted(read_framed_records(part.temp_path)) == sorted(records)  # in shard order, not listing order
        assert part.label_counts == {"yes": 3}

    assert_that(parts, check)
    pipeline.run()
    # A record that is not what the index says (the shard changed under it) fails the run, naming the shard.
    data = bytearray(old_shard.read_bytes())
    data[14] ^= 1
    old_shard.write_bytes(bytes(data))
    broken = BeamTestPipeline(options=pipeline.options)
    _ = (broken
         | beam.Create([(("train", 0, 0), items[:1])])
         | beam.ParDo(FeaturizePart(spec=AUDIO, config=AudioConfig(), dataset_dir=str(dataset),
                                    temp_dir=str(tmp_path / "tmp"), roots=(str(tmp_path / "nowhere"),),
                                    vocabulary={"yes": 0}, progress_dir=str(tmp_path / "progress"))))
    with pytest.raises(Exception, match=f"{old_shard.name}: the record at byte 0 is not the 12-byte record"):
        broken.run()


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
    item = work_item(0, "yes/a.wav", 1)
    key = part_of(item, files_per_split={"train": 4}, record_bytes=100, shard_bytes=200,
                  fixed_num_shards=None, part_bytes=50, part_files=1000)
    assert key == ("train", hash_prefix % 2, part_index("yes/a.wav", num_parts=4))
    key = part_of(item, files_per_split={"train": 4}, record_bytes=1, shard_bytes=200,
                  fixed_num_shards=None, part_bytes=50, part_files=1)
    assert key == ("train", 0, part_index("yes/a.wav", num_parts=4)), "one file per part"


def test_record_bytes_is_the_size_of_a_framed_record():
    tensor = np.zeros((28, 28, 1), dtype=np.uint8)
    real = encode_example(tensor=tensor, label=3, label_name="sneaker", modality="image", tensor_dtype="uint8",
                          example_id="f" * 64,
                          path="sneaker/train_00017.png", split="train")

    assert abs(record_bytes(IMAGE, feature_shape=(28, 28, 1)) - (len(real) + 16)) < 64


def test_shards_are_assigned_from_the_split_the_path_and_the_number_of_files_per_split():
    split_config = SplitConfig(test_percent=50)
    rule = SplitRule(config=split_config, listed={"yes/0.wav": "validation"})
    items = [work_item(0, f"yes/{index}.wav", 1, rule.split_of(f"yes/{index}.wav")) for index in range(50)]
    files_per_split = collections.Counter(item["split"] for item in items)
    assert files_per_split["validation"] == 1 and set(files_per_split) == {"train", "validation", "test"}

    parts = group_by_part(items, record_bytes=100, shard_bytes=1000, fixed_num_shards=None, part_bytes=300)

    assert [key for key, _ in parts] == sorted(key for key, _ in parts)
    assert sorted(item["path"] for _, part_items in parts for item in part_items) == sorted(
        item["path"] for item in items), "every item in one part"
    for (split, index, part), part_items in parts:
        for item in part_items:
            num_shards = math.ceil(files_per_split[split] * 100 / 1000)
            num_parts = math.ceil(files_per_split[split] * 100 / num_shards / 300)
            assert (split, index, part) == (item["split"], shard_index(item["path"], num_shards=num_shards),
                                            part_index(item["path"], num_parts=num_parts)), item
    keys = [key for key, _ in parts]
    assert len({key[:2] for key in keys if key[0] == "test"}) > 1, "the test split should span shards"
    assert len({key for key in keys if key[:2] == ("test", 0)}) > 1, "a test shard should span parts"


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
    assert not list(tmp_path.glob("*.tmp*"))


def test_shards_are_byte_identical_whatever_the_input_order_and_the_number_of_parts(
        tmp_path, pipeline, make_image, example_decoder):
    rng = np.random.default_rng(3)
    items, relative_paths = [], []
    for index in range(30):
        relative = f"label{index % 3}/{index}.png"
        data = make_image(Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)), "PNG")
        write(tmp_path / relative, data)
        items.append(work_item(0, relative, len(data)))
        relative_paths.append(relative)
    # 30 files of 1000 bytes in one shard: parts of 10**9 bytes make one part, parts of 8000 bytes four.
    runs = {"forward": (items, 10**9), "backward": (items[::-1], 10**9), "parts": (items, 8000)}
    shards = {}
    for name, (ordered, part_bytes) in runs.items():
        p = BeamTestPipeline(options=pipeline.options)
        temp_dir = tmp_path / name
        shard_files = (p
                       | beam.Create(group_by_part(ordered, record_bytes=1000, shard_bytes=10**9, fixed_num_shards=None,
                                                 part_bytes=part_bytes))
                       | beam.ParDo(FeaturizePart(spec=IMAGE, config=ImageConfig(), dataset_dir=str(tmp_path),
                                                  temp_dir=str(temp_dir), roots=(str(tmp_path),),
                                                  vocabulary={"label0": 0, "label1": 1, "label2": 2},
                                                  progress_dir=str(tmp_path / "progress")))
                       | WriteShards(temp_dir=str(temp_dir), compression=None))
        assert_that(shard_files, checked_shard_files(
            [("train", 0, 30, {"label0": 10, "label1": 10, "label2": 10})], temp_dir=temp_dir))
        p.run()
        [shard_path] = temp_dir.glob("shard-train-00000-*.tfrecord")
        shards[name] = shard_path.read_bytes()
    assert len(list((tmp_path / "parts").glob("part-train-00000-*.tfrecord"))) == 4
    assert shards["forward"] == shards["backward"] == shards["parts"]
    [shard_path] = (tmp_path / "parts").glob("shard-train-00000-*.tfrecord")
    paths = [example_decoder(record)["path"] for record in read_framed_records(shard_path)]
    assert paths == in_path_hash_order(relative_paths)


def test_write_shards_concatenates_parts_in_order_and_gzips(tmp_path, pipeline):
    parts = []
    for part, records in enumerate(([b"a", b"bb"], [b"ccc"], [b"dddd", b"e"])):
        temp_path = tmp_path / f"part{part}"
        with open(temp_path, "wb") as handle:
            for record in records:
                _TFRecordUtil.write_record(handle, record)
        offsets = [sum(len(earlier) + 16 for earlier in records[:index]) for index in range(len(records))]
        rows = [(0, f"{part}/{index}", 1, 1.5, "train", "x", offset, len(record))
                for index, (offset, record) in enumerate(zip(offsets, records))]
        parts.append(ShardPart("train", 3, part, str(temp_path), len(records), {"x": len(records) - 1, "y": 1},
                               sum(len(record) + 16 for record in records), rows))

    shard_files = (pipeline
                   | beam.Create(parts[::-1])
                   | WriteShards(temp_dir=str(tmp_path / "out"), compression="GZIP"))

    def check_rows(shard_files):
        # The rows' offsets are now within the whole (uncompressed) shard.
        [shard_file] = shard_files
        assert [(row[1], row[6], row[7]) for row in read_shard_rows(shard_file)] == [
            ("0/0", 0, 1), ("0/1", 17, 2), ("1/0", 35, 3), ("2/0", 54, 4), ("2/1", 74, 1)]

    assert_that(shard_files, checked_shard_files([("train", 3, 5, {"x": 2, "y": 3})], temp_dir=tmp_path / "out"))
    assert_that(shard_files, check_rows, label="CheckRows")
    pipeline.run()
    [temp_path] = (tmp_path / "out").glob("shard-train-00003-*.tfrecord.gz")
    unpacked = tmp_path / "unpacked"
    unpacked.write_bytes(gzip.decompress(open(temp_path, "rb").read()))
    assert read_framed_records(unpacked) == [b"a", b"bb", b"ccc", b"dddd", b"e"]


def test_write_shards_refuses_a_shard_that_holds_fewer_records_than_its_parts_claim(tmp_path, pipeline):
    temp_path = tmp_path / "part0"
    with open(temp_path, "wb") as handle:
        _TFRecordUtil.write_record(handle, b"only one")
    # What a runner that loses part of a write, or runs a bundle twice over one file, leaves behind.
    claimed = ShardPart("train", 0, 0, str(temp_path), 2, {"x": 2}, 40, [])

    _ = pipeline | beam.Create([claimed]) | WriteShards(temp_dir=str(tmp_path / "out"), compression=None)

    with pytest.raises(Exception, match="holds 1 intact records where its parts wrote 2"):
        pipeline.run()


def checked_shard_files(expected: list[tuple], *, temp_dir):
    """A matcher: ShardFiles with these split, index, count and label counts, written in `temp_dir`,
    whose size and SHA-256 are those of their file."""
    def check(shard_files):
        assert sorted((f.split, f.index, f.num_examples, f.label_counts) for f in shard_files) == sorted(expected)
        for shard_file in shard_files:
            assert pathlib.Path(shard_file.temp_path).parent == pathlib.Path(temp_dir)
            data = open(shard_file.temp_path, "rb").read()
            assert (shard_file.num_bytes, shard_file.sha256) == (len(data), hashlib.sha256(data).hexdigest())

    return check


def test_a_small_work_list_runs_in_process_and_other_runners_are_left_alone():
    two_workers = ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]

    assert runs_in_process(two_workers, num_files=450, in_process_below=2000)
    assert runs_in_process([], num_files=10, in_process_below=2000), "the default runner starts workers too"
    assert not runs_in_process(two_workers, num_files=3500, in_process_below=2000)
    assert not runs_in_process(two_workers, num_files=1, in_process_below=0)
    assert not runs_in_process(["--runner=FnApiRunner", "--direct_running_mode=in_memory"], num_files=10,
                               in_process_below=2000), "a run asked in memory stays on the runner"
    assert not runs_in_process(["--runner=PrismRunner"], num_files=10, in_process_below=2000)
