"""Tokens/s the data pipeline delivers, against what training consumes: a GPU must never wait on tokenising.

Each variant is a fresh ``LMDataModule`` train loader (source x row format x dataloader workers) read after
two warm-up batches (worker start, first shuffle block); the table shows medians over repeats, variants
interleaved in a rotated order per repeat so that drifting machine load hurts them alike.

- ``sample``: the embedded corpus; ``c4_local``: the C4 reader pointed at the sample's cache folder (the
  same files, so it shows the two share one code path and one speed).
- ``per CPU-s``: tokens per CPU second of the loading process (workers = 0): the pipeline's cost per
  core, unaffected by other load; divide a GPU's consumption by it to size ``data.num_workers``.
- ``--c4-length-docs`` adds ``c4_local*``: the sample's documents joined into C4-length documents (~2,200
  characters, C4 en's mean), written as C4 shards in a temporary folder. In the ``paper`` format a row keeps
  at most ``seq_len`` tokens of a document the tokenizer reads whole, so long documents cost more per row.

Consumption: ``--train-tokens-per-s`` if given, else a measured CPU figure (the tiny model's fp32
forward/backward/AdamW step on this machine), and an estimate for one GPU from the FLOPs per token of
``--gpu-model`` at ``--gpu-mfu`` of ``--gpu-peak-flops`` (default: H100 bf16 dense, 40% MFU). Tokens are
nominal (rows x seq_len, padding included): that is what a training step spends compute on.

    python benchmarks/data_throughput.py                          # < 1 min on 2 CPU cores
    python benchmarks/data_throughput.py --workers 0,1,2,4,8 --c4-length-docs --batches 40
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from optsweep.data import LMDataModule
from optsweep.data.c4 import shard_name, write_shard
from optsweep.data.sample import default_cache_dir, ensure_sample
from optsweep.models.llama import build_llama, flops_per_token

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def model_spec(name: str):
    return instantiate(OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))


def c4_length_corpus(sample_dir: Path, folder: Path, min_chars: int = 2200) -> Path:
    """The sample's documents joined (blank line between) until each reaches ``min_chars``: C4-like lengths."""
    for split, n in (("train", 4), ("validation", 2)):
        for i in range(n):
            with gzip.open(sample_dir / shard_name(split, i), "rt", encoding="utf-8") as f:
                texts = [json.loads(line)["text"] for line in f]
            docs, current = [], []
            for text in texts:
                current.append(text)
                if sum(len(t) for t in current) >= min_chars:
                    docs.append("\n\n".join(current))
                    current = []
            records = [{"text": d, "timestamp": "", "url": ""} for d in docs]
            write_shard(folder / shard_name(split, i), records)
    return folder


def measure(make_dm, batches: int) -> tuple[float, float, float]:
    """Nominal and non-pad tokens per wall second, and nominal tokens per CPU second of this process
    (the whole pipeline's cost when it runs here, i.e. without workers), after two warm-up batches."""
    loader = make_dm().train_dataloader()
    it = iter(loader)
    for _ in range(2):
        next(it)
    nominal = nonpad = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next(it)
        nominal += batch["input_ids"].numel()
        nonpad += int(batch["attention_mask"].sum())
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    del it, loader
    return nominal / elapsed, nonpad / elapsed, nominal / cpu


def cpu_training_tokens_per_s(seq_len: int, micro_batch: int, vocab: int) -> float:
    """The tiny model's fp32 training step on this CPU, median of 3 after one warm-up."""
    model = build_llama(model_spec("llama_tiny"), vocab_size=vocab, pad_token_id=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(3, vocab, (micro_batch, seq_len))
    times = []
    for _ in range(4):
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - start)
    return micro_batch * seq_len / statistics.median(times[1:])


def gpu_tokens_per_s(model: str, seq_len: int, peak_flops: float, mfu: float) -> float:
    meta = build_llama(model_spec(model), vocab_size=32000, device="meta")
    return peak_flops * mfu / flops_per_token(meta, seq_len)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sources", default="sample,c4_local")
    p.add_argument("--formats", default="paper,packed")
    p.add_argument("--workers", default="0,2", help="dataloader worker counts, comma-separated")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=20, help="timed batches per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--path", default=str(default_cache_dir()), help="the sample's cache folder")
    p.add_argument("--c4-length-docs", action="store_true", help="also measure C4-length documents")
    p.add_argument("--train-tokens-per-s", type=float, default=None,
                   help="what training consumes; default: the tiny model measured on this CPU")
    p.add_argument("--gpu-model", default="llama_60m")
    p.add_argument("--gpu-peak-flops", type=float, default=989e12, help="H100 SXM dense bf16")
    p.add_argument("--gpu-mfu", type=float, default=0.4)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*set_vital.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    started = time.perf_counter()
    sample_dir = ensure_sample(args.path)
    build_s = time.perf_counter() - started
    tmp = tempfile.TemporaryDirectory()
    folders = {"sample": None, "c4_local": sample_dir}
    if args.c4_length_docs:
        folders["c4_local*"] = c4_length_corpus(sample_dir, Path(tmp.name))
    sources = [s for s in args.sources.split(",") if s] + (["c4_local*"] if args.c4_length_docs else [])
    variants = [(s, f, int(w)) for s in sources for f in args.formats.split(",") for w in args.workers.split(",")]

    def factory(source, row_format, workers):
        def make():
            kind = "sample" if source == "sample" else "c4_local"
            path = str(sample_dir) if source == "sample" else str(folders[source])
            return LMDataModule(source=kind, path=path, tokenizer=str(sample_dir), seq_len=args.seq_len,
                                row_format=row_format, micro_batch_size=args.micro_batch, num_workers=workers,
                                shuffle_buffer=1000, seed=0)
        return make

    results: dict[tuple, list[tuple[float, float, float]]] = {v: [] for v in variants}
    for r in range(args.repeats):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            results[v].append(measure(factory(*v), args.batches))

    vocab = LMDataModule(source="sample", path=str(sample_dir)).vocab_size
    cpu_rate = args.train_tokens_per_s or cpu_training_tokens_per_s(args.seq_len, args.micro_batch, vocab)
    cpu_label = "given" if args.train_tokens_per_s else "tiny model, fp32, this CPU"
    gpu_rate = gpu_tokens_per_s(args.gpu_model, args.seq_len, args.gpu_peak_flops, args.gpu_mfu)

    print(f"\nsample cache {sample_dir} ({build_s:.1f} s to build or check); seq_len {args.seq_len}, "
          f"micro batch {args.micro_batch}, {args.batches} batches x {args.repeats} repeats; "
          f"{os.cpu_count()} CPU cores; python {sys.version.split()[0]}")
    print(f"training consumes: {cpu_rate:,.0f} tokens/s ({cpu_label}); one GPU: {gpu_rate:,.0f} tokens/s "
          f"({args.gpu_model}, {args.gpu_mfu:.0%} of {args.gpu_peak_flops:.3g} FLOP/s)\n")
    header = f"{'source':<10} {'format':<7} {'workers':>7} {'tokens/s':>12} {'non-pad/s':>12} {'fill':>5} " \
             f"{'per CPU-s':>10} {'x CPU train':>11} {'x GPU':>7}"
    print(header)
    print("-" * len(header))
    single = {}
    for v in variants:
        nominal = statistics.median(x[0] for x in results[v])
        nonpad = statistics.median(x[1] for x in results[v])
        per_cpu = f"{statistics.median(x[2] for x in results[v]):>10,.0f}" if v[2] == 0 else f"{'':>10}"
        if v[2] == 0:
            single[v[:2]] = statistics.median(x[2] for x in results[v])
        print(f"{v[0]:<10} {v[1]:<7} {v[2]:>7} {nominal:>12,.0f} {nonpad:>12,.0f} {nonpad / nominal:>5.2f} "
              f"{per_cpu} {nominal / cpu_rate:>11.1f} {nominal / gpu_rate:>7.2f}")
    print()
    for (source, row_format), rate in single.items():
        need = math.ceil(gpu_rate / rate)
        print(f"{source} {row_format}: {rate:,.0f} tokens per CPU second -> {args.gpu_model} on one GPU needs "
              f"about {need} busy core(s) of data workers (data.num_workers)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
