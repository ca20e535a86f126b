"""The LightningDataModule that feeds prompts to RL training and problem sets to evaluation.

Training batches are ``list[Problem]`` of exactly ``prompts_per_step`` problems (B in
ALGORITHMS.md): each epoch is a fresh permutation of the train set seeded by ``(seed, epoch)``,
cut into ``len(train) // B`` batches (the remainder, different every epoch, is dropped so that
every step has B prompts). ``Trainer(max_steps=...)`` decides when training stops.

The position in that stream (epoch, next batch) is resumable exactly: ``state_dict`` is saved in
Lightning checkpoints and ``load_state_dict`` restores it, so a resumed run sees the same next
batches as an uninterrupted one. The position advances when a batch is *consumed*, never when it
is produced: DataLoader workers produce batches ahead, and Lightning pre-fetches one batch ahead
from loaders without a length (2.6 skips that for sized loaders; earlier versions did not), so
counting produced batches would skip some on resume. Each batch is a ``ProblemBatch`` (a ``list``
tagged with its epoch and index); the position moves past a batch when the train loader hands it
out, and again, authoritatively, when Lightning transfers it to the device for a training step.

DAPO's refill rounds (``refill_batch``) take further prompts mid-step from a second seeded stream over
the train set (``refill:{seed}:{cycle}`` permutations, cut and sharded over ranks as the main
stream is), with its own position in the state. The main stream is left untouched: its epochs keep
their length, which Lightning's sized loader and DataLoader workers reading ahead rely on.

``transfer_batch_to_device`` is the identity for every loader: problems are host-side text, and
Lightning's default would fail on the frozen ``Problem`` dataclass.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lampo_pl.data.columns import ColumnMapping
from lampo_pl.data.record import Problem
from lampo_pl.data.registry import EVAL_SPLITS, check_sources, load_problems
from lampo_pl.data.sources import OnBadRow
from lampo_pl.data.synthetic import LEVELS, generate_synthetic

BatchKey = tuple[int, int, int]  # (epoch, batch index, problem index)


class ProblemBatch(list[Problem]):
    """A training batch: a plain list of problems, tagged with where it sits in the stream."""

    def __init__(self, problems: Sequence[Problem], *, epoch: int, index: int) -> None:
        super().__init__(problems)
        self.epoch = epoch
        self.index = index


class _KeyedProblems(Dataset):
    """Maps a ``BatchKey`` to ``(key, problem)`` so that the collated batch knows its position."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = problems

    def __len__(self) -> int:
        return len(self.problems)

    def __getitem__(self, key: BatchKey) -> tuple[BatchKey, Problem]:
        return key, self.problems[key[2]]


def _collate_tagged(items: list[tuple[BatchKey, Problem]]) -> ProblemBatch:
    epoch, index, _ = items[0][0]
    return ProblemBatch([problem for _, problem in items], epoch=epoch, index=index)


def _collate_list(problems: list[Problem]) -> list[Problem]:
    return problems


def epoch_permutation(num_problems: int, seed: int, epoch: int) -> list[int]:
    """The order of the train set in ``epoch``: a permutation seeded by ``(seed, epoch)``."""
    return random.Random(f"train:{seed}:{epoch}").sample(range(num_problems), num_problems)


class EpochBatchSampler(Sampler[list[BatchKey]]):
    """Yields the rest of the current epoch's batches, starting where ``start()`` says.

    Under data parallelism each global batch holds ``batch_size × world_size`` problems and rank r
    takes the r-th slice, so ranks train on different prompts of one shared, seeded order (this is
    the module's own distributed sampling: Lightning's sampler injection is switched off).
    """

    def __init__(self, num_problems: int, batch_size: int, seed: int, start: Callable[[], tuple[int, int]],
                 rank: int = 0, world_size: int = 1):
        self.num_problems, self.batch_size, self.seed, self.start = num_problems, batch_size, seed, start
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.num_problems // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[list[BatchKey]]:
        epoch, first = self.start()
        order = epoch_permutation(self.num_problems, self.seed, epoch)
        for index in range(first, len(self)):
            offset = (index * self.world_size + self.rank) * self.batch_size
            yield [(epoch, index, i) for i in order[offset : offset + self.batch_size]]


class _TrainLoader(DataLoader):
    """The train DataLoader: advances the owner's position past each batch it hands out.

    It is also ``_Stateful`` (delegating to the DataModule), so that Lightning treats it as
    resumable and does not warn about mid-epoch resumption.
    """

    def __init__(self, owner: ProblemDataModule, sampler: EpochBatchSampler, num_workers: int) -> None:
        super().__init__(
            _KeyedProblems(owner.train_problems),
            batch_sampler=sampler,
            collate_fn=_collate_tagged,
            num_workers=num_workers,
        )
        self.owner = owner

    def __iter__(self) -> Iterator[ProblemBatch]:  # type: ignore[override]
        for batch in super().__iter__():
            self.owner.advance_past(batch)
            yield batch

    def state_dict(self) -> dict[str, int]:
        return self.owner.state_dict()

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.owner.load_state_dict(state_dict)


class ProblemDataModule(L.LightningDataModule):
    """Training prompts in resumable, epoch-shuffled batches of B problems; evaluation sets by name."""

    def __init__(
        self,
        train_set: str = "synthetic",
        train_source: str | None = None,
        train_split: str | None = None,
        train_limit: int | None = None,
        train_columns: ColumnMapping | None = None,
        eval_sets: Sequence[str] = ("synthetic",),
        eval_sources: dict[str, str] | None = None,
        eval_columns: dict[str, ColumnMapping] | None = None,
        eval_limit: int | None = None,
        prompts_per_step: int = 8,
        eval_batch_size: int | None = None,
        seed: int = 0,
        shuffle_seed: int | None = None,
        num_workers: int = 0,
        on_bad_row: OnBadRow = "error",
        synthetic_size: int = 2000,
        synthetic_eval_size: int = 200,
        synthetic_levels: Sequence[int] = LEVELS,
    ) -> None:
        """Configure the data; nothing is read until ``setup``.

        Args:
            train_set: Name of the training set (``lampo_pl.data.registry``): ``synthetic`` (the
                offline embedded default), ``math_train``, ``gsm8k``, or any other name; with
                ``train_columns``, any name for your own data.
            train_source: Hub dataset id or local .jsonl/.json/.parquet/.csv file for the train
                set; ``None`` uses the set's default Hub id (required with ``train_columns``).
            train_split: Split of the train set; ``None`` uses the set's default.
            train_limit: Use only the first N training problems; ``None`` uses all.
            train_columns: Read ``train_source`` as your own data by this column mapping
                (question, answer, extract, solution, id, ...; ``lampo_pl.data.columns``) instead
                of a built-in set's loader.
            eval_sets: Names of the evaluation sets, in the order of the validation dataloaders
                (``dataloader_idx``); empty for no validation. A training set named here is
                evaluated on its held-out split (``registry.EVAL_SPLITS``).
            eval_sources: Per evaluation-set name, a Hub id or local file that replaces its
                default source, e.g. ``{"math500": "data/math500.jsonl"}``.
            eval_columns: Per evaluation-set name, a column mapping that reads its source
                (``eval_sources``) as your own data, like ``train_columns``.
            eval_limit: Use only the first N problems of each evaluation set; ``None`` uses all.
            prompts_per_step: Prompts per training step (B); the rollout samples G responses each.
            eval_batch_size: Problems per validation batch; ``None`` uses ``prompts_per_step``.
            seed: Seeds the per-epoch shuffles, GPQA's choice shuffles and the synthetic problems.
            shuffle_seed: Seeds only the order of the training prompts (per-epoch shuffles and DAPO's
                refill stream); ``None`` uses ``seed``. Paired ablation seeds set it, so that each seed
                sees its own prompt order over the same training and held-out problems.
            num_workers: DataLoader worker processes; the problems are already in memory, so 0
                (load in the main process) is usually right.
            on_bad_row: ``"error"`` stops at the first malformed row (naming source, row and
                field); ``"skip"`` drops malformed rows with a warning that counts them.
            synthetic_size: How many synthetic training problems to generate.
            synthetic_eval_size: How many synthetic evaluation problems to generate (split
                ``test``, a different draw from training); ``eval_limit`` caps it further.
            synthetic_levels: Difficulty levels (1-4, ``lampo_pl.data.synthetic``) the synthetic
                problems cycle through, for training and evaluation alike.
        """
        super().__init__()
        check_sources(train_set, train_source, train_columns, eval_sets, eval_sources or {}, eval_columns or {})
        if prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {prompts_per_step}")
        self.save_hyperparameters()
        # Mappings as plain dicts in the hparams that checkpoints carry, so that a checkpoint still
        # loads under torch.load(weights_only=True), which refuses classes it was not told about.
        self.hparams.update(
            train_columns=asdict(train_columns) if train_columns else None,
            eval_columns={name: asdict(columns) for name, columns in (eval_columns or {}).items()} or None,
        )
        self.train_set, self.train_source, self.train_split = train_set, train_source, train_split
        self.train_limit, self.eval_limit = train_limit, eval_limit
        self.eval_names, self.eval_sources = list(eval_sets), dict(eval_sources or {})
        self.train_columns, self.eval_columns = train_columns, dict(eval_columns or {})
        self.prompts_per_step, self.eval_batch_size = prompts_per_step, eval_batch_size or prompts_per_step
        self.seed, self.num_workers, self.on_bad_row = seed, num_workers, on_bad_row
        self.shuffle_seed = seed if shuffle_seed is None else shuffle_seed
        self.synthetic_size, self.synthetic_eval_size = synthetic_size, synthetic_eval_size
        self.synthetic_levels = tuple(synthetic_levels)
        self.train_problems: list[Problem] = []
        self._eval: dict[str, list[Problem]] | None = None
        self._epoch, self._index = 0, 0  # the next training batch: batch `index` of epoch `epoch`
        self._refills = 0  # refill batches handed out so far (DAPO dynamic sampling), over the whole run
        self._expected: dict[str, int] | None = None  # a loaded state's fingerprint, checked in setup

    def _load(self, name: str, source: str | None, split: str | None, limit: int | None, train: bool) -> list[Problem]:
        columns = self.train_columns if train else self.eval_columns.get(name)
        if name == "synthetic" and source is None:
            size = self.synthetic_size if train else self.synthetic_eval_size
            split = split or ("train" if train else "test")
            size = min(size, limit) if limit else size
            return generate_synthetic(size, levels=self.synthetic_levels, seed=self.seed, split=split)
        split = split or (None if train or columns else EVAL_SPLITS.get(name))
        return load_problems(
            name, source=source, split=split, limit=limit, on_bad_row=self.on_bad_row, seed=self.seed, columns=columns
        )

    def setup(self, stage: str | None = None) -> None:
        """Load the train set (for ``fit``); evaluation sets load on first use (``eval_sets``)."""
        if stage in (None, "fit") and not self.train_problems:
            problems = self._load(self.train_set, self.train_source, self.train_split, self.train_limit, True)
            if len(problems) < self.prompts_per_step:
                raise ValueError(
                    f"train set {self.train_set!r} ({self.train_source or 'default source'}) has "
                    f"{len(problems)} problems, fewer than prompts_per_step={self.prompts_per_step}"
                )
            self.train_problems = problems
            self._check_state()

    def eval_sets(self) -> dict[str, list[Problem]]:
        """The evaluation sets by name, in ``eval_sets`` order (loaded once, then cached)."""
        if self._eval is None:
            self._eval = {
                name: self._load(name, self.eval_sources.get(name), None, self.eval_limit, False)
                for name in self.eval_names
            }
        return self._eval

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    @property
    def batches_per_epoch(self) -> int:
        """Training steps per epoch: ``len(train) // (prompts_per_step × world_size)``."""
        return len(self.train_problems) // (self.prompts_per_step * self._rank_and_world()[1])

    def train_dataloader(self) -> DataLoader:
        """Batches (``ProblemBatch``, a ``list[Problem]``) from the current position to the epoch's end."""
        self.setup("fit")
        rank, world = self._rank_and_world()
        sampler = EpochBatchSampler(len(self.train_problems), self.prompts_per_step, self.shuffle_seed, self.position,
                                    rank=rank, world_size=world)
        return _TrainLoader(self, sampler, self.num_workers)

    def val_dataloader(self) -> list[DataLoader]:
        """One loader of ``list[Problem]`` batches per evaluation set, in ``eval_sets`` order."""
        return [
            DataLoader(
                problems,
                batch_size=self.eval_batch_size,
                collate_fn=_collate_list,
                num_workers=self.num_workers,
            )
            for problems in self.eval_sets().values()
        ]

    def test_dataloader(self) -> list[DataLoader]:
        """The evaluation sets again: ``lampo test`` evaluates the same named benchmarks."""
        return self.val_dataloader()

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Problems stay on the host; a training batch reaching its step moves the position past it."""
        if isinstance(batch, ProblemBatch) and self.trainer is not None and self.trainer.training:
            self.advance_past(batch)
        return batch

    def position(self) -> tuple[int, int]:
        """``(epoch, index)`` of the next training batch."""
        return self._epoch, self._index

    def advance_past(self, batch: ProblemBatch) -> None:
        """Set the position to the batch after ``batch`` (the next epoch's first after its last)."""
        if batch.index + 1 < self.batches_per_epoch:
            self._epoch, self._index = batch.epoch, batch.index + 1
        else:
            self._epoch, self._index = batch.epoch + 1, 0

    def refill_batch(self) -> list[Problem]:
        """B further training problems for this rank, for a refill round of DAPO dynamic sampling.

        Refill batch j is batch ``j % batches_per_epoch`` of the permutation seeded by
        ``refill:{shuffle_seed}:{j // batches_per_epoch}``, sliced per rank like the main stream. Every rank
        must take the same number of refill batches per step (the module agrees on it over ranks),
        so that one saved position (rank 0's) is every rank's.
        """
        self.setup("fit")
        rank, world = self._rank_and_world()
        cycle, index = divmod(self._refills, self.batches_per_epoch)
        order = random.Random(f"refill:{self.shuffle_seed}:{cycle}").sample(range(len(self.train_problems)),
                                                                    len(self.train_problems))
        offset = (index * world + rank) * self.prompts_per_step
        self._refills += 1
        return [self.train_problems[i] for i in order[offset : offset + self.prompts_per_step]]

    def _fingerprint(self) -> dict[str, int]:
        return {
            "seed": self.seed,
            "shuffle_seed": self.shuffle_seed,
            "num_problems": len(self.train_problems),
            "prompts_per_step": self.prompts_per_step,
            "world_size": self._rank_and_world()[1],
        }

    def state_dict(self) -> dict[str, int]:
        """The stream position, and what it depends on (checked when loaded)."""
        return {"epoch": self._epoch, "index": self._index, "refills": self._refills, **self._fingerprint()}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume the stream at a saved position (checked against this run's data once it is loaded)."""
        self._epoch, self._index = int(state_dict["epoch"]), int(state_dict["index"])
        self._refills = int(state_dict.get("refills", 0))  # absent in checkpoints from before refill
        state_dict = {"shuffle_seed": state_dict["seed"], **state_dict}  # absent before shuffle_seed: it was seed
        self._expected = {key: int(state_dict[key]) for key in self._fingerprint()}
        self._check_state()

    def _check_state(self) -> None:
        if self._expected is None or not self.train_problems:
            return
        expected, self._expected = self._expected, None
        if expected["num_problems"] and expected != self._fingerprint():  # 0: saved before any setup
            raise ValueError(
                f"the saved data position was for {expected}, but this run has {self._fingerprint()}: "
                "a resumed run would not see the same batches; keep the data settings or start afresh"
            )

