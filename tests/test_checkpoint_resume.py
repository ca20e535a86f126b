"""Exact resume on the tiny model, and what a checkpoint holds (adapters, λ, training state; no base weights)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from lampo_pl.callbacks import BenchmarkEvaluation
from lampo_pl.checkpointing import AtomicCheckpointIO, RNGStateCheckpoint
from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.data.record import Problem
from lampo_pl.module import LamPOModule
from lampo_pl.policy import adapter_state
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout, SamplingParams
from lampo_pl.settings import ComputeArgs, LoraArgs, MethodArgs, OptimArgs

STEPS = 4  # 3 batches per epoch (6 problems, B = 2): step 2 is mid-epoch, step 3 an epoch boundary


pytestmark = pytest.mark.usefixtures("one_thread")


class ParityReward(LamPOModule):
    """Reward = parity of the sampled text's length: the tiny model then has signal in every group from step 1
    (it solves nothing, and with zero advantages neither the policy nor λ would move), and the rewards depend
    on what was sampled, so a resumed run that samples differently diverges."""

    def score(self, rollout: Rollout, problems: list[Problem]) -> RewardBatch:
        total = [float(len(text) % 2) for text in rollout.texts]
        return RewardBatch(total=total, components={"parity": total}, correct=total, diagnostics={})


class MemoryLogger(Logger):
    """Keeps every logged metric by step."""

    def __init__(self) -> None:
        super().__init__()
        self.by_step: dict[int, dict[str, float]] = {}

    name, version = "memory", 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.by_step.setdefault(int(step or 0), {}).update(metrics)

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def comparable(self, after: int) -> dict[int, dict[str, float]]:
        """Evaluation metrics from step ``after`` on and training metrics after it, without wall-clock ones.

        ``train/*`` of step s are logged at the step count after its update (s), as evaluations are: a run
        resumed from the checkpoint of step ``after`` evaluates those weights but first trains step after + 1.
        """
        def kept(key: str, step: int) -> bool:
            return (key.startswith("eval/") or (key.startswith("train/") and step > after)) and \
                "time" not in key and "per_s" not in key

        return {s: {k: v for k, v in m.items() if kept(k, s)} for s, m in self.by_step.items() if s >= after}


Run = tuple[LamPOModule, MemoryLogger]


def run(tmp: Path, *, ckpt_path: Path | None = None, rng: bool = True, save: bool = False, refill: bool = False) -> Run:
    """Train the tiny model to STEPS with LamPO and a learnt λ, evaluating every step (the eval must not matter);
    ``refill``: with DAPO dynamic sampling, whose refill rounds take prompts from the DataModule mid-step."""
    L.seed_everything(0, verbose=False)
    module = ParityReward(
        model="tiny:qwen3",
        group_size=4,
        prompts_per_step=2,
        lora=LoraArgs(r=4, alpha=8),
        sampling=SamplingParams(temperature=1.0, max_new_tokens=8),
        method=MethodArgs(estimator="lampo", aggregation="lambda", beta=0.04, lambda_init=0.5,
                          dynamic_sampling=refill, max_refill_rounds=3),
        optim=OptimArgs(lr=1e-2, lambda_lr=0.1),
        compute=ComputeArgs(micro_batch_size=4),
    )
    data = ProblemDataModule(
        train_set="synthetic",
        eval_sets=["synthetic"],
        prompts_per_step=2,
        synthetic_size=6,
        synthetic_eval_size=2,
        synthetic_levels=[1],
    )
    callbacks: list[Callback] = [
        BenchmarkEvaluation(
            k=1, max_new_tokens=4, every_n_steps=1, at_end=False, progress=False, output_dir=str(tmp / "eval")
        )
    ]
    callbacks += [RNGStateCheckpoint()] if rng else []
    if save:
        callbacks.append(ModelCheckpoint(dirpath=tmp, filename="{step}", every_n_train_steps=1, save_top_k=-1))
    logger = MemoryLogger()
    trainer = L.Trainer(
        max_steps=STEPS,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=save,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, logger


def assert_same_run(a: Run, b: Run, after: int) -> None:
    (ma, la), (mb, lb) = a, b
    pa, pb = adapter_state(ma.policy_model, "policy"), adapter_state(mb.policy_model, "policy")
    assert all(torch.equal(pa[k], pb[k]) for k in pa), "policy adapters differ"
    assert ma.lam is not None and mb.lam is not None and torch.equal(ma.lam, mb.lam)
    assert la.comparable(after) and la.comparable(after) == lb.comparable(after)


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    straight = run(tmp_path, save=True)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == [f"step={k}.ckpt" for k in range(1, STEPS + 1)]
    for k in (2, 3):  # mid-epoch, then on an epoch boundary (where the DataLoader draws a seed)
        assert_same_run(straight, run(tmp_path, ckpt_path=tmp_path / f"step={k}.ckpt"), after=k)
    # The comparison means something only if training moved the policy. (λ itself stays put here: its
    # gradient needs responses of different lengths, and the tiny model never samples EOS in 8 tokens.)
    assert straight[0].policy_model is not None
    lora_b = [v for k, v in adapter_state(straight[0].policy_model, "policy").items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b), "the policy must have learnt"


def test_resume_with_dynamic_sampling_refills_is_exact(tmp_path: Path) -> None:
    """Refill rounds draw prompts mid-step; the DataModule's saved position covers them (issue 12, item 2)."""
    straight = run(tmp_path, save=True, refill=True)
    refills = [AtomicCheckpointIO().load_checkpoint(tmp_path / f"step={k}.ckpt", weights_only=True)
               ["ProblemDataModule"]["refills"] for k in range(1, STEPS + 1)]
    assert refills[2] > refills[1], "step 3 must refill (resuming at step 3 then restores a moved refill stream)"
    for k in (2, 3):
        assert_same_run(straight, run(tmp_path, ckpt_path=tmp_path / f"step={k}.ckpt", refill=True), after=k)


def test_without_rng_state_resume_diverges(tmp_path: Path) -> None:
    """The control: without the RNG callback the resumed rollouts are sampled from another stream."""
    straight = run(tmp_path, save=True)
    resumed = run(tmp_path, ckpt_path=tmp_path / "step=2.ckpt", rng=False)
    pa, pb = adapter_state(straight[0].policy_model, "policy"), adapter_state(resumed[0].policy_model, "policy")
    assert any(not torch.equal(pa[k], pb[k]) for k in pa)


def test_checkpoint_holds_adapters_and_training_state_but_no_base_weights(tmp_path: Path) -> None:
    module, _ = run(tmp_path, save=True)
    path = tmp_path / "step=2.ckpt"
    ckpt = AtomicCheckpointIO().load_checkpoint(path, weights_only=True)  # loads under torch's safe unpickler
    keys = set(ckpt["state_dict"])
    assert keys and all(".lora_A." in k or ".lora_B." in k or k == "lam" for k in keys), keys
    assert {k.split(".lora_")[1].split(".")[1] for k in keys if k != "lam"} == {"policy", "reference"}
    assert module.policy_model is not None
    base = [p for n, p in module.policy_model.named_parameters() if "lora_" not in n]
    base_bytes = sum(p.numel() * p.element_size() for p in base)
    lora_bytes = sum(v.numel() * v.element_size() for v in ckpt["state_dict"].values())
    # Adapters, plus AdamW's two moments of the trainable half, plus pickling overhead; the base would double it.
    size = path.stat().st_size
    assert size < lora_bytes * 2 + 150_000 < base_bytes, (size, lora_bytes, base_bytes)
    assert ckpt["global_step"] == 2 and ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    assert ckpt["ProblemDataModule"]["index"] == 2  # the next batch of epoch 0
    (states,) = [v["rng_per_rank"] for k, v in ckpt["callbacks"].items() if k.startswith("RNGStateCheckpoint")]
    (rng,) = states  # one rank
    assert set(rng) >= {"torch", "python", "numpy"}
    assert not math.isnan(float(ckpt["state_dict"]["lam"]))


# Two DDP ranks (gloo, CPU) sample different streams; run as ``script.py TAG [CKPT]`` (Lightning relaunches it).
DDP_SCRIPT = """
import sys
import lightning as L, torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lampo_pl.checkpointing import AtomicCheckpointIO, RNGStateCheckpoint
from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.module import LamPOModule
from lampo_pl.policy import adapter_state
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import SamplingParams
from lampo_pl.settings import ComputeArgs, MethodArgs, OptimArgs

class ParityReward(LamPOModule):
    def score(self, rollout, problems):
        total = [float(len(text) % 2) for text in rollout.texts]
        return RewardBatch(total=total, components={"parity": total}, correct=total, diagnostics={})

class Record(L.Callback):
    def __init__(self, tag):
        self.tag, self.texts = tag, {}
    def on_train_start(self, trainer, pl_module):
        torch.manual_seed(100 + trainer.global_rank)  # each rank its own stream
    def on_train_batch_end(self, trainer, pl_module, *args):
        self.texts[trainer.global_step] = pl_module.last_step.texts
    def on_train_end(self, trainer, pl_module):
        out = {"texts": self.texts, "adapter": adapter_state(pl_module.policy_model, "policy")}
        torch.save(out, f"{self.tag}{trainer.global_rank}.pt")

tag, ckpt = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
L.seed_everything(0, verbose=False)
module = ParityReward(model="tiny:qwen3", group_size=4, prompts_per_step=2,
                      sampling=SamplingParams(temperature=1.0, max_new_tokens=8),
                      method=MethodArgs(estimator="lampo", beta=0.04, dynamic_sampling=True, max_refill_rounds=2),
                      optim=OptimArgs(lr=1e-2), compute=ComputeArgs(micro_batch_size=4))
data = ProblemDataModule(train_set="synthetic", eval_sets=[], prompts_per_step=2, synthetic_size=16,
                         synthetic_levels=[1])
callbacks = [Record(tag), RNGStateCheckpoint()]
if ckpt is None:
    callbacks.append(ModelCheckpoint(dirpath="ck", filename="{step}", every_n_train_steps=1, save_top_k=-1))
trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=4, logger=False,
                    use_distributed_sampler=False, plugins=[AtomicCheckpointIO()], enable_checkpointing=ckpt is None,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
trainer.fit(module, datamodule=data, ckpt_path=ckpt)
"""


@pytest.mark.slow
def test_ddp_resume_is_exact_on_every_rank(tmp_path: Path) -> None:
    """Each rank gets its own RNG state back (gathered into the checkpoint), not rank 0's. ~1 min on 2 cores."""
    script = tmp_path / "ddp_resume.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for args in (["straight"], ["resumed", "ck/step=2.ckpt"]):
        proc = subprocess.run(
            [sys.executable, str(script), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        straight, resumed = (torch.load(tmp_path / f"{t}{rank}.pt", weights_only=True) for t in ("straight", "resumed"))
        assert sorted(resumed["texts"]) == [3, 4]
        assert all(resumed["texts"][s] == straight["texts"][s] for s in (3, 4)), f"rank {rank} sampled differently"
        assert all(torch.equal(straight["adapter"][k], resumed["adapter"][k]) for k in straight["adapter"])
    ranks = [torch.load(tmp_path / f"straight{r}.pt", weights_only=True)["texts"][3] for r in (0, 1)]
    assert ranks[0] != ranks[1], "ranks must sample different streams, else the test proves nothing"
