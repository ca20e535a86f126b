"""``lampo fit|validate|test -c configs/x.yaml``: LightningCLI over the module and the data module.

Shared values are linked once: the data module's ``prompts_per_step`` is the module's B.
``lampo validate|test`` evaluate the policy (or ``--adapter DIR``, ``--base_model true``, a
``--ckpt_path``) with the config's ``BenchmarkEvaluation``; ``--k`` and ``--limit`` override it.
``lampo export ...`` merges an adapter into its base model (``lampo_pl.export``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import fields

from lightning.pytorch.cli import LightningCLI

from lampo_pl.callbacks.evaluation import EvalOverrides
from lampo_pl.checkpointing import RNGStateCheckpoint
from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.export import main as export_main
from lampo_pl.module import LamPOModule

TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}},
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    "enable_checkpointing": False,
    # Checkpoint files are written then renamed: a killed run never leaves one half-written.
    "plugins": {"class_path": "lampo_pl.checkpointing.AtomicCheckpointIO"},
    # The data module shards prompts by rank itself (data/datamodule.py, EpochBatchSampler).
    "use_distributed_sampler": False,
}


class LamPOCLI(LightningCLI):
    """LightningCLI with the project's links and defaults."""

    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.link_arguments("data.prompts_per_step", "model.prompts_per_step")
        parser.add_class_arguments(EvalOverrides)  # top-level --adapter, --base_model, --k, --limit

    def eval_overrides(self) -> EvalOverrides:
        config = self.config[self.subcommand]
        return EvalOverrides(**{f.name: config[f.name] for f in fields(EvalOverrides)})

    def before_fit(self) -> None:
        if self.eval_overrides() != EvalOverrides():
            raise ValueError("--adapter, --base_model, --k and --limit are for validate/test; to start training "
                             "from an adapter use --model.lora.init_adapter")

    def before_validate(self) -> None:
        self.eval_overrides().apply(self.trainer)

    before_test = before_validate


def build_cli(args: list[str] | None = None, run: bool = True) -> LamPOCLI:
    """The CLI over ``args`` (default: the command line); ``run=False`` only parses and instantiates."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return LamPOCLI(
        LamPOModule,
        ProblemDataModule,
        # A fresh RNG callback per CLI: it carries the RNG state between steps (checkpointing.py).
        trainer_defaults={**TRAINER_DEFAULTS, "callbacks": [RNGStateCheckpoint()]},
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main() -> None:
    """Console entry point (``lampo``), also ``python -m lampo_pl``."""
    if sys.argv[1:2] == ["export"]:  # not a Trainer method, so not a LightningCLI subcommand
        export_main(sys.argv[2:])
        return
    build_cli()
