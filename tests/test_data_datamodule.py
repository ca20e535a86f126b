"""ProblemDataModule: batches, per-epoch reshuffles, exact resumption (standalone and through Lightning)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from lampo_pl.data import ColumnMapping, Problem
from lampo_pl.data.datamodule import ProblemBatch, ProblemDataModule

FIXTURES = Path(__file__).parent / "fixtures" / "data"
EXAMPLES = Path(__file__).parents[1] / "examples" / "data"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def module(**kwargs: object) -> ProblemDataModule:
    # 10 problems in batches of 3: 3 batches an epoch, one problem left out (a different one each epoch).
    options: dict[str, object] = {"synthetic_size": 10, "prompts_per_step": 3, "eval_sets": (), "seed": 7}
    dm = ProblemDataModule(**{**options, **kwargs})  # type: ignore[arg-type]
    dm.setup("fit")
    return dm


def take(dm: ProblemDataModule, k: int) -> list[list[str]]:
    """The ids of the next ``k`` batches, across epochs, as a training loop would consume them."""
    batches: list[list[str]] = []
    while len(batches) < k:
        for batch in dm.train_dataloader():
            batches.append([problem.id for problem in batch])
            if len(batches) == k:
                break
    return batches


def test_batches_are_lists_of_b_problems() -> None:
    dm = module()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(loader) == dm.batches_per_epoch == 3 and len(batches) == 3
    assert all(isinstance(batch, list) and len(batch) == 3 for batch in batches)
    assert all(isinstance(problem, Problem) for batch in batches for problem in batch)
    ids = [problem.id for batch in batches for problem in batch]
    assert len(set(ids)) == 9  # no repeats within an epoch


def test_reshuffled_every_epoch_and_seeded() -> None:
    stream = take(module(), 9)
    epochs = [sorted(id_ for batch in stream[i : i + 3] for id_ in batch) for i in (0, 3, 6)]
    assert stream[0:3] != stream[3:6] != stream[6:9]
    assert len({tuple(epoch) for epoch in epochs}) > 1  # the dropped problem changes too
    assert take(module(), 9) == stream
    assert take(module(seed=8), 9) != stream


def test_shuffle_seed_orders_the_same_problems_differently() -> None:
    stream = take(module(), 6)
    assert take(module(shuffle_seed=7), 6) == stream  # the default is seed
    other = module(shuffle_seed=8)
    assert [p.id for p in other.train_problems] == [p.id for p in module().train_problems]  # same problems
    assert take(other, 6) != stream  # in another order
    assert take(module(seed=3, shuffle_seed=8), 6) != take(other, 6)  # seed still draws the synthetic problems
    dm = module(shuffle_seed=8)
    assert dm.refill_batch() != module().refill_batch()  # DAPO's refill stream follows the order seed too


def test_state_saved_before_shuffle_seed_loads_as_seed() -> None:
    first = module()
    take(first, 2)
    state = {k: v for k, v in first.state_dict().items() if k != "shuffle_seed"}  # an older checkpoint
    resumed = module()
    resumed.load_state_dict(state)
    assert take(resumed, 2) == take(module(), 4)[2:]
    with pytest.raises(ValueError, match="would not see the same batches"):
        module(shuffle_seed=9).load_state_dict(state)


@pytest.mark.parametrize("consumed", [1, 3, 4])  # mid-epoch, at an epoch boundary, in the second epoch
def test_resume_from_state_dict_continues_the_stream(consumed: int) -> None:
    reference = take(module(), 8)
    first = module()
    head = take(first, consumed)
    state = first.state_dict()
    assert state["epoch"] == consumed // 3 and state["index"] == consumed % 3
    resumed = module()
    resumed.load_state_dict(state)
    assert head + take(resumed, 8 - consumed) == reference


def test_resume_with_workers_matches() -> None:
    reference = take(module(), 5)
    first = module(num_workers=1)
    head = take(first, 2)  # worker prefetching must not move the position past what was consumed
    resumed = module(num_workers=1)
    resumed.load_state_dict(first.state_dict())
    assert head + take(resumed, 3) == reference


def test_state_from_other_data_settings_is_refused() -> None:
    state = module().state_dict()
    other = ProblemDataModule(synthetic_size=10, prompts_per_step=2, eval_sets=(), seed=7)
    other.load_state_dict(state)  # checked once the train set is loaded
    with pytest.raises(ValueError, match="would not see the same batches"):
        other.setup("fit")


class _Recorder(L.LightningModule):
    """Records the ids of each training batch; one parameter so the optimizer has work."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch: list[Problem], batch_idx: int) -> torch.Tensor:
        assert isinstance(batch, list) and all(isinstance(problem, Problem) for problem in batch)
        self.seen.append([problem.id for problem in batch])
        return (self.weight - 1.0).pow(2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(
    max_steps: int, root: Path, ckpt_path: str | None = None, every: int | None = None,
    data: ProblemDataModule | None = None,
) -> list[list[str]]:
    callbacks = [L.pytorch.callbacks.ModelCheckpoint(root, every_n_train_steps=every, save_top_k=-1)] if every else []
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=bool(every),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    recorder = _Recorder()
    trainer.fit(recorder, datamodule=data or module(), ckpt_path=ckpt_path)
    return recorder.seen


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice on workers and logging
def test_lightning_checkpoint_resumes_the_exact_stream(tmp_path: Path) -> None:
    reference = _fit(8, tmp_path / "a")
    # A checkpoint written by a callback mid-run, after step 4 (epoch 1, batch 1): the resumed run
    # must go on with batch 5 of the same shuffled stream.
    head = _fit(6, tmp_path / "b", every=4)
    checkpoint = next((tmp_path / "b").glob("*step=4*.ckpt"))
    tail = _fit(8, tmp_path / "c", ckpt_path=str(checkpoint))
    assert head[:4] + tail == reference
    assert len(tail) == 4


def test_eval_sets_and_val_loaders() -> None:
    dm = ProblemDataModule(
        synthetic_size=10,
        synthetic_eval_size=7,
        eval_sets=("synthetic", "math500"),
        eval_sources={"math500": str(FIXTURES / "math500.jsonl")},
        eval_batch_size=2,
    )
    sets = dm.eval_sets()
    assert list(sets) == ["synthetic", "math500"] and [len(s) for s in sets.values()] == [7, 4]
    assert all(p.metadata["split"] == "test" for p in sets["synthetic"])
    dm.setup("fit")
    assert not {p.id for p in sets["synthetic"]} & {p.id for p in dm.train_problems}
    loaders = dm.val_dataloader()
    assert [len(loader) for loader in loaders] == [4, 2]
    batch = next(iter(loaders[1]))
    assert isinstance(batch, list) and [p.id for p in batch] == [p.id for p in sets["math500"][:2]]
    assert dm.transfer_batch_to_device(batch, torch.device("cpu"), 1) is batch
    limited = ProblemDataModule(eval_sets=("synthetic",), eval_limit=3)
    assert len(limited.eval_sets()["synthetic"]) == 3


def test_position_follows_consumption_not_prefetching() -> None:
    dm = module()
    batches = iter(dm.train_dataloader())
    first, _ = next(batches), next(batches)  # a fetcher that reads one batch ahead
    assert isinstance(first, ProblemBatch) and (first.epoch, first.index) == (0, 0)
    assert dm.position() == (0, 2)
    dm.trainer = SimpleNamespace(training=True, global_rank=0, world_size=1)  # type: ignore[assignment]
    dm.transfer_batch_to_device(first, torch.device("cpu"), 0)  # the batch reaches training_step
    assert dm.position() == (0, 1)


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown problem set 'mathh'"):
        ProblemDataModule(eval_sets=("mathh",))
    with pytest.raises(ValueError, match="eval_sources names sets not in eval_sets"):
        ProblemDataModule(eval_sets=("synthetic",), eval_sources={"math500": "x.jsonl"})
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=f"{re.escape(str(empty))}: no problems to load"):
        ProblemDataModule(train_set="gsm8k", train_source=str(empty)).setup("fit")
    small = ProblemDataModule(train_set="gsm8k", train_source=str(FIXTURES / "gsm8k.jsonl"), prompts_per_step=4)
    with pytest.raises(ValueError, match=r"train set 'gsm8k' \(.*gsm8k.jsonl\) has 3 problems, fewer than"):
        small.setup("fit")


def test_ranks_take_disjoint_slices_of_each_global_batch() -> None:
    from lampo_pl.data.datamodule import EpochBatchSampler

    def start() -> tuple[int, int]:
        return 0, 0

    one = list(EpochBatchSampler(20, 3, seed=1, start=start))
    r0 = list(EpochBatchSampler(20, 3, seed=1, start=start, rank=0, world_size=2))
    r1 = list(EpochBatchSampler(20, 3, seed=1, start=start, rank=1, world_size=2))
    assert len(r0) == len(r1) == 20 // 6 and len(one) == 20 // 3
    for step, (a, b) in enumerate(zip(r0, r1, strict=True)):
        ids_a, ids_b = {k[2] for k in a}, {k[2] for k in b}
        assert not ids_a & ids_b
        # the two ranks' slices together are two consecutive single-process batches of the same order
        assert ids_a | ids_b == {k[2] for k in one[2 * step]} | {k[2] for k in one[2 * step + 1]}


@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice on workers and logging
def test_a_run_on_own_data_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    # The mapping travels in the checkpoint's datamodule hparams: it must load under weights_only.
    def own() -> ProblemDataModule:
        columns = ColumnMapping(id="uid", question="q", answer="work", extract="gsm8k")
        return ProblemDataModule(train_set="my_sums", train_source=str(EXAMPLES / "sums.jsonl"),
                                 train_columns=columns, prompts_per_step=2, eval_sets=())

    head = _fit(2, tmp_path, every=1, data=own())
    checkpoint = next(tmp_path.glob("*step=2*.ckpt"))
    assert torch.load(checkpoint, weights_only=True)["datamodule_hyper_parameters"]["train_columns"]["question"] == "q"
    tail = _fit(3, tmp_path / "resumed", ckpt_path=str(checkpoint), data=own())
    assert len(tail) == 1 and tail[0][0].startswith("sums-") and tail[0] not in head
