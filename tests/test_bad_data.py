"""Broken data reported where it breaks: truncated or corrupt gzip shards, lines that are not JSON, tokenizer
files that cannot be parsed - from the reader, the train stream, `python -m optsweep.data check` and run.py.

Every broken file is made here in a temporary folder. Expected byte offsets and line numbers come from
plain stdlib readings of the same bytes (one zlib call over the whole file, or zlib fed one byte at a time
from the start), never from the reader under test.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from optsweep.data import DataUnavailableError, c4, sample
from optsweep.data.c4 import LocalShards, load_tokenizer, write_shard
from optsweep.data.check import check_folder
from optsweep.data.check import main as check_main
from optsweep.data.datamodule import LMDataModule
from optsweep.data.shardfile import BadDocumentError, BadShardError
from optsweep.data.stream import TrainStream
from optsweep.errors import explain

ROOT = Path(__file__).resolve().parents[1]


def records(n: int, seed: int = 0, words: int = 60) -> list[dict]:
    """Documents of random words: they compress poorly, so a shard spans several of the reader's chunks."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    return [{"text": " ".join(rng.choice(vocab) for _ in range(words)), "timestamp": "2019-04-25T12:00:00Z",
             "url": f"https://example.org/{seed}/{i}"} for i in range(n)]


def shard_bytes(recs: list[dict]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
        for r in recs:
            gz.write(json.dumps(r).encode() + b"\n")
    return buffer.getvalue()


def shard_with_lines(lines: list[bytes]) -> bytes:
    return gzip.compress(b"".join(line + b"\n" for line in lines), mtime=0)


def read_all(path: Path) -> list[str]:
    folder, name = path.parent, path.name
    shards = LocalShards(folder, "train" if "train" in name else "validation")
    return list(shards.documents(shards.names.index(name)))


def first_rejected_byte(data: bytes) -> int:
    """Where zlib, fed the file one byte at a time from its start, first refuses it."""
    d = zlib.decompressobj(31)
    for i in range(len(data)):
        try:
            d.decompress(data[i : i + 1])
        except zlib.error:
            return i
    raise AssertionError("zlib accepted every byte")


# --- the reader ----------------------------------------------------------------------------------------

def test_truncated_shard_names_file_byte_and_line(tmp_path):
    whole = shard_bytes(records(2000))
    assert len(whole) > 3 * 65536  # spans several reads
    cut = whole[: int(len(whole) * 0.6)]
    path = tmp_path / c4.shard_name("train", 0)
    path.write_bytes(cut)
    recovered = zlib.decompressobj(31).decompress(cut)  # everything the cut file still holds
    complete_lines = recovered.count(b"\n")
    with pytest.raises(BadShardError) as caught:
        read_all(path)
    message = str(caught.value)
    assert str(path) in message and "truncated" in message
    assert f"byte {len(cut):,}," in message and f"in line {complete_lines + 1}," in message
    assert message.endswith("download it again")


def test_corrupt_deflate_data_names_the_rejected_byte(tmp_path):
    whole = bytearray(shard_bytes(records(2000, seed=1)))
    whole[150_000:150_040] = b"\xff" * 40  # garbled in the third 64 KiB read; zlib notices a few bytes on
    rejected = first_rejected_byte(bytes(whole))
    assert 131_072 < rejected < len(whole) - 8  # mid-stream, past two reads: the offset adds those bytes
    path = tmp_path / c4.shard_name("train", 3)
    path.write_bytes(bytes(whole))
    lines_before = zlib.decompressobj(31).decompress(bytes(whole[:rejected])).count(b"\n")
    shards = LocalShards(tmp_path, "train")
    shards.on_bad_document = "skip"  # the garbled bytes first inflate to garbage lines: pass over them
    with pytest.raises(BadShardError) as caught:
        list(shards.lines(0))
    assert f"{path} is corrupt at compressed byte {rejected:,}, in line {lines_before + 1} (" in str(caught.value)


def test_wrong_checksum_is_corrupt(tmp_path):
    whole = bytearray(shard_bytes(records(20)))
    whole[-8] ^= 0xFF  # the gzip trailer's CRC32
    path = tmp_path / c4.shard_name("train", 0)
    path.write_bytes(bytes(whole))
    # zlib checks the CRC once its 4 bytes are in: it rejects the last of them
    assert first_rejected_byte(bytes(whole)) == len(whole) - 5
    with pytest.raises(BadShardError, match=f"corrupt at compressed byte {len(whole) - 5:,}, in line 21 .*data check"):
        read_all(path)


def test_empty_and_concatenated_shards(tmp_path):
    empty = tmp_path / c4.shard_name("train", 0)
    empty.write_bytes(b"")
    with pytest.raises(BadShardError, match="is empty"):
        read_all(empty)
    a, b = records(5, seed=2), records(4, seed=3)
    two_members = tmp_path / c4.shard_name("train", 1)
    two_members.write_bytes(shard_bytes(a) + shard_bytes(b))  # gzip allows members back to back
    assert read_all(two_members) == [r["text"] for r in a + b]


@pytest.mark.parametrize("bad, reason", [
    (b'{"text": "unterminated', "not JSON: Unterminated string"),
    (b"", "not JSON: Expecting value at column 1"),
    (b'{"text": 7, "url": "u"}', 'a JSON value without a "text" string'),
    (b'["text"]', 'a JSON value without a "text" string'),
    (b'{"text": "caf\xe9"}', "not UTF-8 at byte 13 of the line"),
])
def test_bad_line_names_file_and_line(tmp_path, bad, reason):
    good = [json.dumps(r).encode() for r in records(9)]
    path = tmp_path / c4.shard_name("validation", 0)
    path.write_bytes(shard_with_lines(good[:6] + [bad] + good[6:]))
    with pytest.raises(BadDocumentError) as caught:
        read_all(path)
    message = str(caught.value)
    assert message.startswith(f"C4 shard {path}, line 7, is {reason}")
    assert message.endswith("add data.on_bad_document=skip to skip such lines")


def test_skip_passes_over_bad_lines_and_keeps_line_numbers(tmp_path):
    recs = records(9)
    good = [json.dumps(r).encode() for r in recs]
    path = tmp_path / c4.shard_name("train", 0)
    path.write_bytes(shard_with_lines([b"nope"] + good[:4] + [b"{", b"[]"] + good[4:]))
    shards = LocalShards(tmp_path, "train")
    shards.on_bad_document = "skip"
    lines = list(shards.lines(0))
    assert [n for n, t in lines if t is None] == [0, 5, 6]
    assert [t for _, t in lines if t is not None] == [r["text"] for r in recs]
    assert next(shards.lines(0, start=6)) == (6, None) and next(shards.documents(0, start=7)) == recs[4]["text"]


# --- the train stream: skipped lines are counted across readers and survive a resume ----------------------

@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return sample.ensure_sample(tmp_path_factory.mktemp("sample") / "sample")


def bad_line_folder(folder: Path, shards: int, bad_every: int) -> int:
    """``shards`` train shards with every ``bad_every``-th line not JSON; returns the number of bad lines."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = 0
    for s in range(shards):
        lines = []
        for i, r in enumerate(records(40, seed=10 + s, words=8)):
            if i % bad_every == 3:
                lines.append(b"not json %d" % i)
                bad += 1
            lines.append(json.dumps(r).encode())
        (folder / c4.shard_name("train", s)).write_bytes(shard_with_lines(lines))
    return bad


@pytest.mark.parametrize("shards, readers", [(4, 2), (1, 3)])  # readers split by shard, and by document
def test_stream_counts_each_skipped_line_once(tmp_path, tokenizer_dir, shards, readers):
    bad = bad_line_folder(tmp_path, shards, bad_every=7)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    found = LocalShards(tmp_path, "train")
    found.on_bad_document = "skip"
    total = 0
    for reader in range(readers):
        stream = TrainStream(found, tokenizer, 16, "paper", shuffle_buffer=5, rank=reader, world_size=readers)
        docs = list(itertools.takewhile(lambda d: d[0]["epoch"] == 0, stream.documents()))
        assert all("not json" not in text for _, text in docs)
        total += max(pos["skipped_through_block"] for pos, _ in docs)
    assert total == bad  # every bad line counted by exactly one reader


def test_resume_with_skipped_lines_gives_the_same_rows(tmp_path, tokenizer_dir):
    bad_line_folder(tmp_path, 2, bad_every=5)
    dm = LMDataModule(source="c4_local", path=str(tmp_path), tokenizer=str(tokenizer_dir), seq_len=16,
                      micro_batch_size=2, shuffle_buffer=4, on_bad_document="skip")
    stream = dm.train_stream(0, 1)
    rows = iter(stream)
    list(itertools.islice(rows, 9))
    state = stream.state_dict()
    expected = [r[0].tolist() for r in itertools.islice(rows, 6)]
    resumed = dm.train_stream(0, 1)
    resumed.load_state_dict(state)
    assert [r[0].tolist() for r in itertools.islice(iter(resumed), 6)] == expected
    assert resumed.state_dict()["skipped_through_block"] >= state["skipped"]


def test_loader_counts_skipped_lines_from_its_worker(tmp_path, tokenizer_dir):
    bad = bad_line_folder(tmp_path, 1, bad_every=7)
    dm = LMDataModule(source="c4_local", path=str(tmp_path), tokenizer=str(tokenizer_dir), seq_len=16,
                      micro_batch_size=4, num_workers=1, shuffle_buffer=4, on_bad_document="skip")
    batches = iter(dm.train_dataloader())
    assert dm.bad_lines_skipped() == 0
    for _ in range(10):  # the whole pass of 40 documents, read in a worker process
        next(batches)
    assert dm.bad_lines_skipped() == bad


def test_on_bad_document_choices():
    with pytest.raises(Exception, match="data.on_bad_document='ignore' is not a choice"):
        LMDataModule(source="sample", on_bad_document="ignore")


# --- python -m optsweep.data check -------------------------------------------------------------------------

def test_check_counts_documents_and_names_every_bad_shard(tmp_path, capsys):
    good = records(30, seed=4)
    write_shard(tmp_path / c4.shard_name("train", 0), good)
    whole = shard_bytes(records(50, seed=5))
    (tmp_path / c4.shard_name("train", 1)).write_bytes(whole[: len(whole) // 2])
    readable = zlib.decompressobj(31).decompress(whole[: len(whole) // 2]).count(b"\n")  # whole lines left
    lines = [json.dumps(r).encode() for r in records(12, seed=6)]
    (tmp_path / c4.shard_name("validation", 0)).write_bytes(shard_with_lines(lines[:2] + [b"x", b"y"] + lines[2:]))

    reports = {Path(r.path).name: r for r in check_folder(tmp_path, workers=2, progress=False)}
    assert reports[c4.shard_name("train", 0)].ok and reports[c4.shard_name("train", 0)].documents == 30
    assert "truncated" in reports[c4.shard_name("train", 1)].problem
    val = reports[c4.shard_name("validation", 0)]
    assert (val.documents, val.bad_lines) == (12, 2) and ", line 3, is not JSON" in val.problem

    assert check_main(["check", str(tmp_path), "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert err.count("error: C4 shard ") == 2 and "(2 bad lines in all)" in err
    assert out.strip().endswith(f"3 shards, {30 + readable + 12} documents, 2 bad shards")


def test_check_good_folder_exits_0(tmp_path, capsys):
    for s in range(3):
        write_shard(tmp_path / c4.shard_name("train", s), records(10 + s, seed=s))
    assert check_main(["check", str(tmp_path), "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "3 shards, 33 documents, 0 bad shards" and "checking shards" in err  # the bar
    assert check_main(["check", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --- a tokenizer that cannot be parsed ------------------------------------------------------------------------

@pytest.mark.parametrize("broken", ["tokenizer.json", "tokenizer_config.json"])
def test_unparsable_tokenizer_file_is_named(tmp_path, tokenizer_dir, broken):
    folder = tmp_path / "tok"
    shutil.copytree(tokenizer_dir, folder)
    text = (folder / broken).read_bytes()
    (folder / broken).write_bytes(text[: len(text) // 2])  # cut mid-way, as an interrupted copy leaves it
    with pytest.raises(DataUnavailableError) as caught:
        load_tokenizer(str(folder))
    assert str(caught.value).startswith(f"Tokenizer file {folder / broken} (data.tokenizer={folder}) cannot be "
                                        "parsed (not JSON:")


# --- run.py: one sentence, exit 2, the checkpoint kept, the MLflow run FAILED -------------------------------

def test_run_stops_at_a_bad_line_in_one_sentence(tmp_path, tokenizer_dir):
    data = tmp_path / "c4"
    data.mkdir()
    shutil.copy(tokenizer_dir / c4.shard_name("validation", 0), data)
    good = [json.dumps(r).encode() for r in records(120, seed=8, words=20)]
    bad_at = 100  # 0-based: line 101, read after the checkpoint of step 2 (8 documents a step)
    (data / c4.shard_name("train", 0)).write_bytes(shard_with_lines(good[:bad_at] + [b"<html>"] + good[bad_at:]))
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, str(ROOT / "run.py"), "model=llama_tiny", "trainer=cpu", "data=c4_local",
           f"data.path={data}", f"data.tokenizer={tokenizer_dir}", "data.seq_len=32", "data.num_workers=1",
           "data.shuffle_buffer=8", "data.val_tokens=500", "train.total_batch_size=8", "train.micro_batch_size=4",
           "train.max_steps=40", "train.warmup_steps=2", "train.eval_every_n_steps=100",
           "callbacks.checkpoint.every_n_train_steps=2", "task_name=badline"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: C4 shard {data / c4.shard_name('train', 0)}, line 101, is not JSON"), last
    assert "Traceback" not in result.stderr
    ckpts = list((tmp_path / "outputs" / "checkpoints" / "badline").rglob("step*.ckpt"))
    assert ckpts, "the checkpoints written before the bad line are kept"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("badline").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_run_that_skips_bad_lines_logs_how_many(tmp_path, tokenizer_dir):
    data = tmp_path / "c4"
    data.mkdir()
    shutil.copy(tokenizer_dir / c4.shard_name("validation", 0), data)
    good = [json.dumps(r).encode() for r in records(120, seed=8, words=20)]
    bad = [b"<html>", b'{"text": 3}', b"{not json"]
    lines = good[:10] + bad[:1] + good[10:30] + bad[1:] + good[30:]  # all read by step 10 (8 documents a step)
    (data / c4.shard_name("train", 0)).write_bytes(shard_with_lines(lines))
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "run.py"), "model=llama_tiny", "trainer=cpu", "data=c4_local",
           f"data.path={data}", f"data.tokenizer={tokenizer_dir}", "data.seq_len=32", "data.num_workers=1",
           "data.shuffle_buffer=8", "data.val_tokens=500", "data.on_bad_document=skip",
           "train.total_batch_size=8", "train.micro_batch_size=4", "train.max_steps=12", "train.warmup_steps=2",
           "train.eval_every_n_steps=100", "trainer.log_every_n_steps=5", "logger=csv", "task_name=skipping"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = []
    for path in (tmp_path / "outputs").rglob("metrics.csv"):
        with path.open() as f:
            rows += [r for r in csv.DictReader(f) if r.get("data/bad_documents_skipped")]
    logged = {int(r["step"]): float(r["data/bad_documents_skipped"]) for r in rows}
    assert sorted(logged) == [5, 10, 12], logged  # the logging steps and the last one, as the train loss
    assert logged[12] == len(bad), logged


def test_worker_wrapped_error_becomes_its_sentence():
    from torch._utils import ExceptionWrapper

    try:
        raise BadShardError("C4 shard /d/x.json.gz is truncated: download it again")
    except BadShardError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(BadShardError) as caught:
        wrapped.reraise()
    assert "Original Traceback" in str(caught.value)
    assert explain(caught.value) == ("C4 shard /d/x.json.gz is truncated: download it again", 2)
