"""The manifest records every shard's size and SHA-256; `python -m beam_jobs.verify` checks a dataset against it."""
import hashlib
import pathlib
import shutil

import pytest

from beam_jobs import preprocess, verify
from beam_jobs.table.manifest import DatasetManifest


@pytest.fixture(scope="module", params=["none", "gzip"])
def dataset(request, tmp_path_factory, make_tone_tree, runner_flags) -> pathlib.Path:
    root = make_tone_tree(tmp_path_factory.mktemp("verify_tree"), per_class=10)
    out = tmp_path_factory.mktemp(f"verify_out_{request.param}")
    preprocess.run([f"--audio_root={root}", f"--output_dir={out}", "--num_shards=2",
                    f"--compression={request.param}", *runner_flags["in_memory"]], save_main_session=False)
    return out / "audio"


def copy_of(dataset: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    copy = tmp_path / "audio"
    shutil.copytree(dataset, copy)
    return copy


def test_the_manifest_records_each_shards_size_and_checksum(dataset):
    manifest = DatasetManifest.from_json((dataset / "dataset.json").read_text())
    shards = [shard for split in manifest.splits.values() for shard in split.shards]
    assert shards
    for shard in shards:
        data = (dataset / shard.path).read_bytes()
        assert (shard.num_bytes, shard.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_an_intact_dataset_verifies(dataset, capsys):
    assert verify.main([str(dataset)]) == 0
    assert capsys.readouterr().out.startswith("OK: ")


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "missing"])
def test_a_damaged_shard_is_named_with_what_is_wrong(dataset, tmp_path, capsys, damage):
    copy = copy_of(dataset, tmp_path)
    shard = sorted(copy.glob("spans/*/*-train.tfrecord*"))[0]
    data = bytearray(shard.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncated":
        shard.write_bytes(bytes(data[:len(data) * 2 // 3]))
    else:
        shard.unlink()

    assert verify.main([str(copy)]) == 1

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{shard}: ")
    expected = {"flipped byte": "SHA-256 differs", "truncated": "bytes, the manifest says", "missing": "missing"}
    assert expected[damage] in lines[0], lines[0]
    if damage != "missing":
        assert "intact records, the manifest says" in lines[0]
    assert lines[1].startswith("BAD: 1 of ")
