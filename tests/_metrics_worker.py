"""Runs the real LlamaLitModule through Lightning on hand-made padded batches and writes what it logged.

``python tests/_metrics_worker.py OUT_DIR WORLD_SIZE``: one validation pass (step 0), then ACCUMULATE x STEPS
training micro batches per rank at lr 0 (the weights never move, so the test can recompute every loss with
the initial weights, saved to OUT_DIR/initial.pt). WORLD_SIZE 2 runs Lightning's DDP on gloo; the ranks get
different numbers of rows and different row lengths. The batches come from ``val_batches``/``train_batches``
below, which the test calls too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

from optsweep.models.llama import ModelSpec
from optsweep.training.module import LlamaLitModule

VOCAB, PAD, SEQ = 61, 0, 12
SPEC = ModelSpec(name="metrics", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, vocab_size=VOCAB)
ACCUMULATE, STEPS = 3, 2


def _batch(generator: torch.Generator, lengths: list[int]) -> dict[str, torch.Tensor]:
    """Right-padded rows of the given lengths: pad id in the input, -100 in the labels, 0 in the mask."""
    ids = torch.full((len(lengths), SEQ), PAD, dtype=torch.long)
    mask = torch.zeros((len(lengths), SEQ), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, VOCAB, (n,), generator=generator)
        mask[row, :n] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# Rows per batch and their lengths, per rank: unequal on purpose (so the token-weighted mean differs
# from the mean of batch means, and the ranks hold different numbers of rows and batches).
VAL_LENGTHS = {0: [[12, 3], [5], [12, 12, 2]], 1: [[2, 2, 2, 9], [11]]}
TRAIN_LENGTHS = {0: [[12, 4], [3], [7, 7, 7], [12], [2, 10], [6, 6]],
                 1: [[9], [12, 12, 12], [2, 3], [5, 8], [12], [4, 4, 4, 4]]}


def val_batches(rank: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(100 + rank)
    return [_batch(generator, lengths) for lengths in VAL_LENGTHS[rank]]


def train_batches(rank: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(200 + rank)
    return [_batch(generator, lengths) for lengths in TRAIN_LENGTHS[rank]]


class RecordingLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    name = "recording"
    version = "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.records.append((step, {k: float(v) for k, v in metrics.items()}))


class HandBatchesModule(LlamaLitModule):
    """The module under test, fed this rank's hand-made batches."""

    def train_dataloader(self):
        return DataLoader(train_batches(self.global_rank), batch_size=None)

    def val_dataloader(self):
        return DataLoader(val_batches(self.global_rank), batch_size=None)


def main(out: Path, world_size: int) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = HandBatchesModule(
        model_spec=SPEC,
        optimizer=lambda model: torch.optim.SGD(model.parameters(), lr=0.0),
        scheduler=lambda warmup_steps, total_steps: (lambda step: 1.0),
        max_steps=STEPS, warmup_steps=0, vocab_size=VOCAB, pad_token_id=PAD,
    )
    logger = RecordingLogger()
    trainer = L.Trainer(
        accelerator="cpu", devices=world_size, strategy="ddp" if world_size > 1 else "auto",
        max_steps=STEPS, accumulate_grad_batches=ACCUMULATE, log_every_n_steps=1, logger=logger,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, use_distributed_sampler=False,
    )
    trainer.validate(module, verbose=False)
    if trainer.is_global_zero:
        torch.save(module.llama.state_dict(), out / "initial.pt")
    trainer.fit(module)
    if trainer.is_global_zero:
        (out / "logged.json").write_text(json.dumps(logger.records))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
