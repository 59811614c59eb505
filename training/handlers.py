"""Ignite/MONAI handlers that make a fold's training resumable and deterministic.

Why our own checkpoint handler rather than MONAI's ``CheckpointSaver`` +
``EarlyStopHandler`` + ``MetricsSaver``: after a restart, the weights, the
optimizer, the engine's epoch, the best validation score with its weights, the
early-stopping counter and the logged history must all come from *one*
consistent moment.  ``CheckpointSaver`` writes with ``atomic=False`` and
numbers its files by epoch, and neither it nor ``EarlyStopHandler`` puts its
own counters in the checkpoint, so a restart could resume with a stale best
model or a reset patience.  ``FoldCheckpointer`` writes everything into one
file per epoch (temporary file, fsync, rename), and MONAI's
``CheckpointLoader`` restores it.

Determinism across restarts: ``EpochSeeder`` reseeds every random stream
training touches (torch, numpy, random, the augmentation transforms, the
sampler, the loader's generator) at the start of each epoch from
``(seed, fold, epoch)``.  An interrupted run that resumes from the checkpoint
of epoch ``e`` therefore trains epoch ``e + 1`` exactly as an uninterrupted run
would (bitwise on CPU; tested).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from xiqa.durable import write_bytes_atomically

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.csv"
HISTORY_FIELDS = ("epoch", "train_loss", "val_dice", "best_val_dice", "best_epoch", "seconds")


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from several integers (independent streams per fold and epoch)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def atomic_torch_save(obj: object, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomically(path, buffer.getvalue())


class EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffles ``length`` indices in an order that depends only on ``(seed, epoch)``."""

    def __init__(self, length: int, seed: int) -> None:
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.length)
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.length


class EpochSeeder:
    """Reseed all random streams at EPOCH_STARTED from ``(seed, fold, epoch)``."""

    def __init__(self, seed: int, fold: int, sampler: EpochSampler | None = None, transform=None,
                 generator: torch.Generator | None = None) -> None:
        self.seed, self.fold = seed, fold
        self.sampler, self.transform, self.generator = sampler, transform, generator

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        seed = derive_seed(self.seed, self.fold, epoch)
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=seed)
        if self.generator is not None:
            self.generator.manual_seed(seed)


class BestWeights:
    """The best network weights so far, kept in memory and inside the checkpoint."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, network: torch.nn.Module) -> None:
        self.state = {key: value.detach().cpu().clone()
                      for key, value in network.state_dict().items()}

    def state_dict(self) -> dict:
        return {"weights": self.state if self.state is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state["weights"]) or None


class FoldCheckpointer:
    """Validation-metric tracking, best weights, early stopping, CSV history and the checkpoint.

    Attach to the trainer *after* MONAI's ``ValidationHandler`` so that the
    evaluator's ``metric_name`` is fresh when EPOCH_COMPLETED reaches it.
    ``patience`` 0 disables early stopping; otherwise training stops after
    ``patience`` epochs whose score did not beat the best by more than
    ``min_delta``.  A NaN score never counts as an improvement.
    """

    def __init__(self, folder: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 evaluator: Engine, metric_name: str = "val_dice", patience: int = 0,
                 min_delta: float = 0.0) -> None:
        if patience < 0:
            raise ValueError(f'Argument "patience" must be >= 0, got {patience}')
        self.folder = Path(folder)
        self.network, self.optimizer, self.evaluator = network, optimizer, evaluator
        self.metric_name, self.patience, self.min_delta = metric_name, patience, min_delta
        self.best = BestWeights()
        self.best_metric = -math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.stopped_early = False
        self.seconds = 0.0
        self.history: list[dict] = []
        self._loss_sum = 0.0
        self._loss_count = 0
        self._epoch_started = 0.0

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / CHECKPOINT_NAME

    # Persisted state: only plain types, so CheckpointLoader's weights_only load accepts it.
    def state_dict(self) -> dict:
        return {"best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early,
                "seconds": self.seconds, "history": [dict(row) for row in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped_early = bool(state["stopped_early"])
        self.seconds = float(state["seconds"])
        self.history = [dict(row) for row in state["history"]]
        # Rows of an epoch that ran after this checkpoint (and was interrupted) are dropped.
        self._write_history()

    def save_dict(self, trainer: Engine) -> dict:
        """What goes into (and is restored from) the checkpoint."""
        return {"network": self.network, "optimizer": self.optimizer, "trainer": trainer,
                "progress": self, "best_network": self.best}

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._add_loss)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._complete_epoch)

    def _start_epoch(self, engine: Engine) -> None:
        self._loss_sum, self._loss_count = 0.0, 0
        self._epoch_started = time.perf_counter()

    def _add_loss(self, engine: Engine) -> None:
        output = engine.state.output
        rows = output if isinstance(output, list) else [output]
        loss = rows[0]["loss"]
        self._loss_sum += float(loss) * len(rows)
        self._loss_count += len(rows)

    def _complete_epoch(self, trainer: Engine) -> None:
        epoch = trainer.state.epoch
        score = float(self.evaluator.state.metrics.get(self.metric_name, math.nan))
        self.seconds += time.perf_counter() - self._epoch_started
        if math.isfinite(score) and score > self.best_metric + self.min_delta:
            self.best_metric, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best.update(self.network)
        else:
            self.bad_epochs += 1
        if self.best.state is None:  # keep something loadable even if every score was NaN
            self.best.update(self.network)
            self.best_epoch = epoch
        self.stopped_early = bool(self.patience) and self.bad_epochs >= self.patience
        self.history.append({
            "epoch": epoch,
            "train_loss": self._loss_sum / max(self._loss_count, 1),
            "val_dice": score,
            "best_val_dice": self.best_metric if math.isfinite(self.best_metric) else math.nan,
            "best_epoch": self.best_epoch,
            "seconds": round(self.seconds, 2),
        })
        self._write_history()
        atomic_torch_save({name: obj.state_dict() for name, obj in self.save_dict(trainer).items()},
                          self.checkpoint_path)
        logger.info("epoch %d train_loss %.4f %s %.4f (best %.4f at epoch %d)", epoch,
                    self.history[-1]["train_loss"], self.metric_name, score,
                    self.history[-1]["best_val_dice"], self.best_epoch)
        if self.stopped_early:
            logger.info("early stop: no improvement for %d epochs", self.bad_epochs)
            trainer.terminate()

    def _write_history(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        write_bytes_atomically(self.folder / HISTORY_NAME, text.getvalue().encode())
