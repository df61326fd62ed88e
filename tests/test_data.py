"""The data pipeline: sample corpus, C4 readers and their errors, rows, rank/worker split, validation, resume.

Expected values come from plain re-implementations here (the shard files read with gzip/json, the paper's
tokenizer call made directly), never from the pipeline's own helpers. Offline: the hub is never contacted.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from optsweep.data import DataUnavailableError, LMDataModule, c4, sample
from optsweep.data.loader import TrainLoader, collate
from optsweep.data.rows import max_token_id_in_text
from optsweep.data.stream import TrainStream
from optsweep.data.validation import validation_rows
from optsweep.errors import UserError

# --- helpers: an independent reading of the files -------------------------------------------------------

def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def split_texts(folder: Path, split: str) -> list[str]:
    return [r["text"] for p in sorted(folder.glob(f"c4-{split}.*.json.gz")) for r in read_jsonl_gz(p)]


def paper_rows(tokenizer, texts, seq_len) -> list[tuple[int, ...]]:
    enc = tokenizer(texts, max_length=seq_len, truncation=True, padding="max_length")
    return [tuple(ids) for ids in enc["input_ids"]]


def take(loader_iter, n):
    return [next(loader_iter) for _ in range(n)]


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x[k], y[k]) for k in ("input_ids", "attention_mask", "labels")) for x, y in zip(a, b)
    )


@pytest.fixture(scope="session")
def sample_builds(tmp_path_factory):
    """The sample built here, and built again by another process with another hash seed (in parallel)."""
    root = tmp_path_factory.mktemp("data")
    elsewhere = root / "built_elsewhere"
    script = "import sys; from optsweep.data import sample; sample.build(sys.argv[1])"
    other = subprocess.Popen([sys.executable, "-c", script, str(elsewhere)],
                             env={**os.environ, "PYTHONHASHSEED": "12345"})
    try:
        yield sample.ensure_sample(root / "sample"), elsewhere, other
    finally:
        if other.poll() is None:
            other.kill()
        other.wait()


@pytest.fixture(scope="session")
def sample_dir(sample_builds) -> Path:
    return sample_builds[0]


@pytest.fixture(scope="session")
def tokenizer(sample_dir):
    return c4.load_tokenizer(str(sample_dir))


@pytest.fixture()
def tiny_corpus(tmp_path, tokenizer) -> Path:
    """3 train shards of 5 documents of different lengths, 1 validation shard: epochs take a few rows."""
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    for i in range(3):
        records = [
            {"text": " ".join(words[(i + j + k) % 10] for k in range(3 + 7 * j + i)) + f" doc{i}.{j}",
             "timestamp": "t", "url": f"u{i}.{j}"}
            for j in range(5)
        ]
        c4.write_shard(tmp_path / c4.shard_name("train", i), records)
    val = [{"text": f"validation document {j} " + "beta " * j, "timestamp": "t", "url": "v"} for j in range(9)]
    c4.write_shard(tmp_path / c4.shard_name("validation", 0), val)
    tokenizer.save_pretrained(str(tmp_path))
    return tmp_path


# --- the sample corpus ------------------------------------------------------------------------------------

def test_sample_is_c4_format_with_disjoint_splits(sample_dir):
    names = sorted(p.name for p in sample_dir.glob("*.json.gz"))
    assert names == [f"c4-train.0000{i}-of-01024.json.gz" for i in range(4)] + [
        f"c4-validation.0000{i}-of-00008.json.gz" for i in range(2)
    ]
    for name in names:
        records = read_jsonl_gz(sample_dir / name)
        assert records and all(list(r) == ["text", "timestamp", "url"] for r in records)
        assert all(len(r["text"]) >= 200 for r in records)
    train, val = split_texts(sample_dir, "train"), split_texts(sample_dir, "validation")
    assert len(set(train)) == len(train) and len(set(val)) == len(val)  # deduplicated
    assert not set(train) & set(val)
    assert 1500 < len(train) and 150 < len(val) < len(train) / 4
    manifest = json.loads((sample_dir / "manifest.json").read_text())
    assert manifest["documents"] == {"train": len(train), "validation": len(val)}
    assert (sample_dir / "tokenizer.json").exists()


def test_sample_build_is_deterministic_and_cached(sample_builds, monkeypatch):
    sample_dir, second, other = sample_builds
    assert other.wait(timeout=300) == 0
    files = sorted(p.name for p in sample_dir.iterdir())
    assert files == sorted(p.name for p in second.iterdir())
    for name in files:
        assert (sample_dir / name).read_bytes() == (second / name).read_bytes(), name
    # a valid cache is reused without building
    monkeypatch.setattr(sample, "build", lambda *a, **k: pytest.fail("rebuilt a valid cache"))
    assert sample.ensure_sample(sample_dir) == sample_dir


def test_interrupted_or_stale_build_never_leaves_half_a_corpus(sample_dir, tmp_path, monkeypatch):
    records = [{"text": f"document number {i} " * 30, "timestamp": "t", "url": "u",
                "_sha": hashlib.sha256(str(i).encode()).hexdigest()} for i in range(80)]
    monkeypatch.setattr(sample, "collect_documents", lambda min_chars: records)

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "train_tokenizer", broken)
    target = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        sample.ensure_sample(target)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    # a corrupted cache fails its hash check
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in sample_dir.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    assert sample.is_valid(copy)
    (copy / "c4-train.00001-of-01024.json.gz").write_bytes(b"not gzip")
    assert not sample.is_valid(copy)


def test_sample_tokenizer_round_trips_and_appends_eos(sample_dir, tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert len(tokenizer) == 4096 and max_token_id_in_text(tokenizer) == 4095
    texts = split_texts(sample_dir, "validation")[:50] + ["  tabs\tand\nnewlines  ", "naïve café — ünïcode ✓"]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer(text)["input_ids"] == ids + [1]
    compression = sum(len(t) for t in texts[:50]) / sum(len(tokenizer(t)["input_ids"]) for t in texts[:50])
    assert compression > 3.0  # chars per token: a trained BPE, not bytes


# --- C4 readers and their errors --------------------------------------------------------------------------

def _one_sentence(message: str) -> bool:
    return "\n" not in message and message.count(". ") == 0


def test_c4_local_missing_or_empty_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataUnavailableError) as err:
        LMDataModule(source="c4_local", path=str(missing)).prepare_data()
    message = str(err.value)
    assert str(missing) in message and "c4-train.NNNNN-of-01024.json.gz" in message and "data.path" in message
    assert _one_sentence(message)
    with pytest.raises(DataUnavailableError) as err:
        LMDataModule(source="c4_local", path=str(tmp_path)).prepare_data()
    assert str(tmp_path) in str(err.value) and "holds no c4-train.NNNNN-of-01024.json.gz" in str(err.value)
    assert _one_sentence(str(err.value))
    with pytest.raises(UserError, match="data.path="):
        LMDataModule(source="c4_local", path=None)


def test_c4_local_reads_the_hub_layout(tiny_corpus, tmp_path):
    nested = tmp_path / "c4root"
    (nested / "en").mkdir(parents=True)
    for p in tiny_corpus.glob("*.json.gz"):
        (nested / "en" / p.name).write_bytes(p.read_bytes())
    shards = c4.LocalShards(nested, "train")
    assert len(shards) == 3 and list(shards.documents(1)) == [r["text"] for r in read_jsonl_gz(
        tiny_corpus / c4.shard_name("train", 1))]
    assert list(shards.documents(1, start=3)) == list(shards.documents(1))[3:]


def test_c4_hub_unreachable_fails_at_once_with_one_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c4, "hub_reachable", lambda timeout=5.0: pytest.fail("probed although offline"))
    with pytest.raises(DataUnavailableError) as err:
        LMDataModule(source="c4").prepare_data()
    message = str(err.value)
    assert "data=sample" in message and "data=c4_local data.path=" in message and _one_sentence(message)
    # no env flag: a failed probe gives the same error, without retries
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    calls = []
    monkeypatch.setattr(c4, "hub_reachable", lambda timeout=5.0: calls.append(timeout) or False)
    with pytest.raises(DataUnavailableError, match="data=sample"):
        LMDataModule(source="c4").prepare_data()
    assert len(calls) == 1


def test_hub_tokenizer_unavailable_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(DataUnavailableError, match="data.tokenizer"):
        c4.load_tokenizer("t5-base")


def test_max_token_id_excludes_t5_like_sentinels(tokenizer, sample_dir):
    from transformers import AutoTokenizer

    t5_like = AutoTokenizer.from_pretrained(str(sample_dir))
    t5_like.add_special_tokens({"additional_special_tokens": [f"<extra_id_{i}>" for i in range(10)]})
    assert len(t5_like) == 4106
    assert max_token_id_in_text(t5_like) == 4095
    texts = split_texts(sample_dir, "validation")
    assert max(max(ids) for ids in t5_like(texts)["input_ids"]) <= 4095
    t5_like.add_tokens(["<plain_added>"])  # a non-special added token can come out of text
    assert max_token_id_in_text(t5_like) == 4106


# --- rows and batches -------------------------------------------------------------------------------------

def test_collate_masks_pad_by_hand():
    rows = [(np.array([5, 6, 1, 0], dtype=np.int32), 3), (np.array([7, 1, 0, 0], dtype=np.int32), 2)]
    batch = collate(rows)
    assert all(v.dtype == torch.long for v in batch.values())
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 1, -100], [7, 1, -100, -100]]


def test_paper_rows_match_the_papers_tokenizer_call(tiny_corpus, tokenizer):
    dm = LMDataModule(source="c4_local", path=str(tiny_corpus), tokenizer=str(tiny_corpus), seq_len=16,
                      micro_batch_size=5, shuffle_buffer=0)
    stream = dm.train_stream(0, 1)
    texts = [t for _, t in itertools.islice(stream.documents(), 15)]
    batches = take(iter(dm.train_dataloader()), 3)
    ids = torch.cat([b["input_ids"] for b in batches])
    assert [tuple(r) for r in ids.tolist()] == paper_rows(tokenizer, texts, 16)
    mask = torch.cat([b["attention_mask"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    assert torch.equal(labels == -100, mask == 0) and torch.equal(mask == 0, ids == 0)
    lengths = [min(len(tokenizer(t)["input_ids"]), 16) for t in texts]
    assert mask.sum(1).tolist() == lengths
    assert all(ids[i, n - 1] == 1 for i, n in enumerate(lengths))  # eos last, also when truncated


def test_packed_rows_are_the_concatenated_documents(tiny_corpus, tokenizer):
    dm = LMDataModule(source="c4_local", path=str(tiny_corpus), tokenizer=str(tiny_corpus), seq_len=8,
                      micro_batch_size=4, row_format="packed", shuffle_buffer=4, seed=3)
    texts = [t for _, t in itertools.islice(dm.train_stream(0, 1).documents(), 40)]
    flat = [i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"] + [1]]
    batches = take(iter(dm.train_dataloader()), 10)
    ids = torch.cat([b["input_ids"] for b in batches]).flatten().tolist()
    assert ids == flat[: len(ids)]
    assert all(bool(b["attention_mask"].all()) and torch.equal(b["labels"], b["input_ids"]) for b in batches)


# --- who reads what ---------------------------------------------------------------------------------------

def test_readers_are_disjoint_and_cover_every_pass(tiny_corpus, tokenizer):
    shards = c4.LocalShards(tiny_corpus, "train")
    everything = Counter(split_texts(tiny_corpus, "train"))
    for readers in (2, 3, 6):  # by shard (3 shards >= readers) and by document (6 readers > 3 shards)
        stream = TrainStream(shards, tokenizer, 16, shuffle_buffer=4, seed=7)
        for epoch in (0, 1):
            got = [Counter(t for t, _ in stream.reader_documents(epoch, r, readers)) for r in range(readers)]
            assert sum(got, Counter()) == everything
            assert all(not (got[a] & got[b]) for a in range(readers) for b in range(a + 1, readers))


def test_two_ranks_two_workers_deliver_each_document_once(tiny_corpus, tokenizer):
    """The real loaders: 4 readers (2 ranks x 2 workers) over 3 shards of 5 documents, one pass, file order."""
    dm = LMDataModule(source="c4_local", path=str(tiny_corpus), tokenizer=str(tiny_corpus), seq_len=32,
                      micro_batch_size=2, num_workers=2, shuffle_buffer=0)
    delivered = Counter()
    for rank in (0, 1):
        loader = dm.train_stream(rank, 2)
        loader = StatefulDataLoader(loader, batch_size=2, num_workers=2, collate_fn=collate)
        # fewer shards than readers: reader g takes documents g, g+4, ... of the pass
        need = [len(range(rank * 2 + w, 15, 4)) for w in (0, 1)]
        rows = {0: [], 1: []}
        for i, batch in enumerate(itertools.islice(loader, 2 * max(-(-n // 2) for n in need))):
            rows[i % 2].extend(tuple(r) for r in batch["input_ids"].tolist())  # workers take turns
        for w in (0, 1):
            delivered.update(rows[w][: need[w]])
    assert delivered == Counter(paper_rows(tokenizer, split_texts(tiny_corpus, "train"), 32))


def test_shuffle_is_seeded_and_changes_every_pass(tiny_corpus, tokenizer):
    shards = c4.LocalShards(tiny_corpus, "train")

    def first_pass_and_next(seed):
        docs = [t for _, t in itertools.islice(TrainStream(shards, tokenizer, 16, "paper", 6, seed).documents(), 30)]
        return docs[:15], docs[15:]

    a, a_next = first_pass_and_next(1)
    assert first_pass_and_next(1) == (a, a_next)
    b, _ = first_pass_and_next(2)
    in_file_order = split_texts(tiny_corpus, "train")
    assert sorted(a) == sorted(a_next) == sorted(b) == sorted(in_file_order)
    assert len({tuple(a), tuple(a_next), tuple(b), tuple(in_file_order)}) == 4


# --- validation -------------------------------------------------------------------------------------------

def test_validation_is_the_first_documents_within_budget(sample_dir, tokenizer):
    shards = c4.LocalShards(sample_dir, "validation")
    texts = split_texts(sample_dir, "validation")
    expected = paper_rows(tokenizer, texts[:100], 64)
    nonpad = np.cumsum([sum(1 for t in row if t != 0) for row in expected])
    n = int(np.searchsorted(nonpad, 2000) + 1)  # the first n documents reach 2000 tokens
    ids, lengths, summary = validation_rows(shards, tokenizer, 64, "paper", 2000)
    assert [tuple(r) for r in ids.tolist()] == expected[:n]
    assert lengths.sum() == nonpad[n - 1] >= 2000 > nonpad[n - 2]
    assert summary == {"rows": n, "tokens": int(nonpad[n - 1]), "documents": n}

    dm = LMDataModule(source="sample", path=str(sample_dir), seq_len=64, micro_batch_size=4, val_tokens=2000)
    ranks = [dm.validation_dataset(r, 2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])  # every rank runs the same number of batches
    got = [tuple(row) for ds in ranks for row, _ in ds]
    n2 = n + n % 2
    assert sorted(got) == sorted(expected[:n2]) and len(set(got)) == len(got)
    again = LMDataModule(source="sample", path=str(sample_dir), seq_len=64, val_tokens=2000)
    assert [tuple(r) for r, _ in again.validation_dataset(1, 2)] == [tuple(r) for r, _ in ranks[1]]
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape == (4, 64) and torch.equal(batch["labels"] == -100, batch["input_ids"] == 0)

    packed_ids, packed_lengths, _ = validation_rows(shards, tokenizer, 64, "packed", 2000)
    assert len(packed_lengths) == -(-2000 // 64) and (packed_lengths == 64).all() and (packed_ids != 0).all()


# --- resume -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("row_format", ["paper", "packed"])
def test_stream_resumes_exactly_anywhere(tiny_corpus, tokenizer, row_format):
    """Positions over three passes of a 2-reader stream (mid-block, mid-document), saved and reloaded."""
    shards = c4.LocalShards(tiny_corpus, "train")
    n = 70 if row_format == "paper" else 250
    for reader in range(2):
        def stream(rank=reader):
            return TrainStream(shards, tokenizer, 8, row_format, shuffle_buffer=3, seed=5, rank=rank, world_size=2)

        whole, states = [], []
        s = stream()
        for row in itertools.islice(iter(s), n):
            whole.append(tuple(row[0]))
            states.append(s.state_dict())
        assert states[n - 11]["epoch"] >= 2
        assert any(st["token"] > 0 for st in states) == (row_format == "packed")
        for k in range(0, n - 10, 3 if row_format == "paper" else 11):
            resumed = stream()
            resumed.load_state_dict(states[k])
            assert [tuple(r[0]) for r in itertools.islice(iter(resumed), 10)] == whole[k + 1 : k + 11]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resume_gives_the_same_batches(sample_dir, num_workers):
    def loader():
        dm = LMDataModule(source="sample", path=str(sample_dir), seq_len=32, micro_batch_size=8,
                          row_format="packed" if num_workers else "paper", num_workers=num_workers,
                          shuffle_buffer=100, seed=11)
        return dm.train_dataloader()

    first = loader()
    it = iter(first)
    take(it, 5)
    state = first.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)  # what a checkpoint does with it
    state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    reference = take(it, 6)
    second = loader()
    second.load_state_dict(state)
    assert same_batches(take(iter(second), 6), reference)


def test_state_counts_only_batches_training_used(sample_dir):
    """Lightning fetches a batch ahead; the state after 3 used batches must resume at the 4th, not the 5th."""
    dm = LMDataModule(source="sample", path=str(sample_dir), seq_len=32, micro_batch_size=4, shuffle_buffer=50)
    loader = dm.train_dataloader()
    it = iter(loader)
    batches = take(it, 5)  # 5 fetched ...
    for _ in range(3):
        loader.mark_consumed()  # ... 3 used
    state = loader.state_dict()
    again = LMDataModule(source="sample", path=str(sample_dir), seq_len=32, micro_batch_size=4, shuffle_buffer=50)
    resumed = again.train_dataloader()
    resumed.load_state_dict(state)
    assert same_batches(take(iter(resumed), 2), batches[3:5])
    assert isinstance(resumed, TrainLoader)


def test_lightning_checkpoint_resumes_on_the_next_batch(sample_dir, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["input_ids"].clone())
            return self.w * 0.0

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    def fit(ckpt_path=None, callbacks=()):
        module = Recorder()
        dm = LMDataModule(source="sample", path=str(sample_dir), seq_len=16, micro_batch_size=2, shuffle_buffer=20)
        trainer = L.Trainer(max_steps=6, accumulate_grad_batches=2, limit_val_batches=0, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                            callbacks=list(callbacks), enable_checkpointing=bool(callbacks))
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        return module.seen

    full = fit(callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)])
    resumed = fit(ckpt_path=str(next(tmp_path.glob("*step=2.ckpt"))))
    assert len(full) == 12 and len(resumed) == 8
    assert all(torch.equal(a, b) for a, b in zip(resumed, full[4:]))


def test_datamodule_exposes_what_the_model_needs(sample_dir):
    dm = LMDataModule(source="sample", path=str(sample_dir), seq_len=32, micro_batch_size=3)
    assert (dm.vocab_size, dm.pad_token_id, dm.eos_token_id, dm.max_token_id_in_text()) == (4096, 0, 1, 4095)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(v.shape == (3, 32) and v.dtype == torch.long for v in batch.values())
    with pytest.raises(UserError, match="row_format"):
        LMDataModule(row_format="ragged")
