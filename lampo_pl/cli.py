"""``lampo fit|validate|test -c configs/x.yaml``: LightningCLI over the module and the data module.

Shared values are linked once: the data module's ``prompts_per_step`` is the module's B.
``lampo validate|test`` evaluate the policy (or ``--adapter DIR``, ``--base_model true``, a
``--ckpt_path``) with the config's ``BenchmarkEvaluation``; ``--k`` and ``--limit`` override it.
``lampo export ...`` merges an adapter into its base model (``lampo_pl.export``);
``lampo warmup -c configs/warmup.yaml`` runs the supervised cold start (``lampo_pl.warmup_cli``).

Failing early and in one line (docs/failure-modes.md): every settings group checks its values when
it is built, the parser's own errors are condensed to the key and the reason, and names and files
(the model, ``--ckpt_path``, ``--adapter``) are checked before any model or data loads. A
``UserError`` is printed as ``lampo <command>: error: <message>`` with exit status 2, no traceback
(``LAMPO_TRACEBACK=1`` shows it).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lampo_pl.callbacks.evaluation import EvalOverrides, free_path
from lampo_pl.callbacks.progress import StepProgressBar
from lampo_pl.checkpointing import RNGStateCheckpoint, RunCheckpoint, verify_checkpoint
from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.errors import UserError
from lampo_pl.module import LamPOModule
from lampo_pl.policy import check_adapter_folder, check_model_available
from lampo_pl.startup_checks import check_accelerator

TRAINER_DEFAULTS = {
    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger", "init_args": {"save_dir": "runs"}},
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
    # fit adds a RunCheckpoint (last.ckpt every 50 steps and at the end) unless the config has its own.
    "enable_checkpointing": True,
    # Checkpoint files are written then renamed: a killed run never leaves one half-written.
    "plugins": {"class_path": "lampo_pl.checkpointing.AtomicCheckpointIO"},
    # The data module shards prompts by rank itself (data/datamodule.py, EpochBatchSampler).
    "use_distributed_sampler": False,
}
# What a fit writes into its version folder before its first step; a failed fit leaving only these is removed.
_STARTUP_FILES = re.compile(r"config\.yaml|hparams\.yaml|events\.out\.tfevents\..*")


# ---- one-line errors ----------------------------------------------------------------------------


class ConfigError(Exception):
    """A parser error, condensed to one line. Not a ValueError: jsonargparse tries union members by catching those."""


_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "Problem with given class_path",
          "Expected a <class 'NoneType'>")
_KEY = re.compile(r'(?:Parser key|Key) "([^"]+)":\s*')


def condense(message: str) -> str:
    """jsonargparse's nested multi-line message as one line: the full key and the innermost reason."""
    keys: list[str] = []
    reason = message.strip().splitlines()[0] if message.strip() else "invalid arguments"
    for raw in message.splitlines():
        line = raw.strip().removeprefix("- ").strip()
        while match := _KEY.match(line):
            keys.append(match.group(1))
            line = line[match.end():]
        if line and not line.startswith(_NOISE):
            reason = line
            break
    reason = re.sub(r"<class '(\w+)'>", r"\1", reason)
    reason = re.sub(r"Expected a typing\.Literal\[(.*)\]\.", r"Expected one of [\1].", reason)
    key = ".".join(k for k in keys if k != "config")
    if not key or re.match(r"[\w.]+=", reason):  # no key, or the settings' own check already names its field
        return reason
    # An inner parser's error arrives already condensed ("tau: Expected a float ..."): join the keys.
    return f"{key}.{reason}" if re.match(r"[\w.]+: ", reason) else f"{key}: {reason}"


class LamPOArgumentParser(LightningArgumentParser):
    """Raises ``ConfigError`` with one line instead of printing 70 lines of usage before the error."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        raise ConfigError(condense(message)) from ex


# ---- the CLI ------------------------------------------------------------------------------------


class LamPOCLI(LightningCLI):
    """LightningCLI with the project's links, defaults and start-up checks."""

    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.link_arguments("data.prompts_per_step", "model.prompts_per_step")
        parser.add_class_arguments(EvalOverrides)  # top-level --adapter, --base_model, --k, --limit

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config  # run=False: no subcommand
        check_accelerator(config.get("trainer") or {})  # before Lightning's 43-line refusal
        if self.subcommand in ("validate", "test"):
            _fixed_log_version(self.config[self.subcommand], self.subcommand)
        if self.subcommand == "fit":
            _resume_in_its_version(self.config["fit"])

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        # The step-counting bar (callbacks/progress.py) unless the config turns bars off or brings its own.
        chosen = [*(config.get("callbacks") or []), *callbacks]
        wanted = config.get("enable_progress_bar") is not False and _RICH_AVAILABLE  # without rich: Lightning's tqdm
        if wanted and not any(isinstance(c, ProgressBar) for c in chosen):
            callbacks = [*callbacks, StepProgressBar()]
        checkpoints = config.get("enable_checkpointing") is not False and self.subcommand == "fit"
        if checkpoints and not any(isinstance(c, ModelCheckpoint) for c in chosen):
            callbacks = [*callbacks, RunCheckpoint()]
        return super()._instantiate_trainer(config, callbacks)

    def instantiate_classes(self) -> None:
        # Settings groups, the module (batch shape) and the data module (set names) check their
        # values when built: that is here, before any model or data loads.
        try:
            super().instantiate_classes()
        except (ValueError, OSError) as error:
            if isinstance(error, UserError):
                raise
            raise UserError(condense(str(error))) from error

    def eval_overrides(self) -> EvalOverrides:
        config = self.config[self.subcommand]
        return EvalOverrides(**{f.name: config[f.name] for f in fields(EvalOverrides)})

    def check_inputs(self) -> None:
        """Names and files, checked before anything loads: the model, ``--ckpt_path``, ``--adapter`` (each settings
        group and callback checks its own values when built)."""
        check_model_available(self.model.model_name)
        config = self.config_init[self.subcommand]
        ckpt = config.get("ckpt_path")
        if ckpt == "last":
            config["ckpt_path"] = ckpt = str(find_last_checkpoint(self.trainer))
            print(f"resuming from {ckpt} (the newest checkpoint of this run)")
        if ckpt is not None and ckpt not in ("best", "hpc", "registry") and "://" not in str(ckpt):
            verify_checkpoint(ckpt)

    def before_fit(self) -> None:
        if self.eval_overrides() != EvalOverrides():
            raise UserError("--adapter, --base_model, --k and --limit are for validate/test; to start training "
                            "from an adapter use --model.lora.init_adapter")
        self.check_inputs()
        log_dir = Path(self.trainer.log_dir) if self.trainer.log_dir else None
        self._new_log_dir = log_dir if log_dir is not None and not log_dir.exists() else None

    def fit(self, model: LamPOModule, **kwargs: Any) -> None:
        """``trainer.fit``; a fit that fails before writing anything but its start-up files leaves no folder."""
        try:
            self.trainer.fit(model, **kwargs)
        except BaseException:
            if self.trainer.is_global_zero:
                remove_if_only_startup_files(self._new_log_dir)
            raise

    def before_validate(self) -> None:
        self.check_inputs()
        overrides = self.eval_overrides()
        if overrides.adapter:
            check_adapter_folder(overrides.adapter)
        overrides.apply(self.trainer)

    before_test = before_validate


def _fixed_log_version(config: Any, subcommand: str) -> None:
    """Log ``lampo validate|test`` to ``<save_dir>/<name>/<subcommand>`` rather than a new ``version_N`` each time."""
    logger = config.get("trainer", {}).get("logger")
    init_args = getattr(logger, "init_args", None)
    if init_args is not None and "version" in init_args and init_args["version"] is None:
        init_args["version"] = subcommand


def _resume_in_its_version(config: Any) -> None:
    """``fit --ckpt_path`` of a checkpoint in ``<save_dir>/<name>/version_N/checkpoints`` (or ``last``) logs
    to that same ``version_N``, so that its TensorBoard curves continue instead of starting a new folder."""
    ckpt = config.get("ckpt_path")
    logger = config.get("trainer", {}).get("logger")
    init_args = getattr(logger, "init_args", None)
    if ckpt is None or init_args is None or "version" not in init_args or init_args["version"] is not None:
        return
    if "save_dir" not in init_args:
        return
    root = Path(init_args["save_dir"]) / (init_args.get("name") or "lightning_logs")
    if ckpt == "last":
        file = newest_checkpoint(sorted(root.glob("*/checkpoints")))
        if file is None:
            return  # find_last_checkpoint says so in one line, with where it looked
    else:
        file = Path(str(ckpt))
    folder = file.resolve().parent
    if folder.name == "checkpoints" and folder.parent.parent == root.resolve():
        init_args["version"] = folder.parent.name


class KeepingSaveConfig(SaveConfigCallback):
    """Lightning's ``config.yaml``, never over an earlier one: a resumed fit writes ``config_resume1.yaml``
    (then 2, ...) beside the first run's, a second ``lampo validate`` ``config_2.yaml`` (issue 25 item 3)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if not self.already_saved and trainer.log_dir is not None:
            name = free_config_name(Path(trainer.log_dir), resumed=stage == "fit") if trainer.is_global_zero else ""
            self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)


def free_config_name(folder: Path, *, resumed: bool) -> str:
    """``config.yaml`` or, when it exists, the first free ``config_resume<n>.yaml`` (fit) / ``config_<n>.yaml``."""
    if not resumed or not (folder / "config.yaml").exists():
        return free_path(folder / "config.yaml").name
    n = 1
    while (folder / (name := f"config_resume{n}.yaml")).exists():
        n += 1
    return name


def find_last_checkpoint(trainer: Any) -> Path:
    """``--ckpt_path last``: the newest ``*.ckpt`` of this run, across its ``version_N`` folders.

    Lightning looks only in the new run's own (empty) folder, warns and trains from scratch; a
    resume request that finds nothing is an error here instead.
    """
    roots = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    logger = trainer.logger
    base = Path(logger.root_dir) if logger is not None and getattr(logger, "root_dir", None) else None
    if base is not None:
        roots += sorted(base.glob("*/checkpoints"))
    found = newest_checkpoint(roots)
    if found is None:
        where = ", ".join(str(r) for r in roots) or str(base or trainer.default_root_dir)
        raise UserError(f"--ckpt_path last: no checkpoint found (looked in {where}); nothing to resume. "
                        "Drop --ckpt_path to start a new run, or give a checkpoint file")
    return found


def newest_checkpoint(folders: list[Path]) -> Path | None:
    """The most recently written ``*.ckpt`` file in ``folders``; ``None`` when there is none."""
    found = [p for folder in folders for p in folder.glob("*.ckpt") if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def remove_if_only_startup_files(folder: Path | None) -> None:
    """Remove ``folder`` (created by this run) if it holds only a config, hparams and TensorBoard start-up files."""
    if folder is None or not folder.is_dir():
        return
    entries = list(folder.rglob("*"))
    if all(p.is_file() and _STARTUP_FILES.fullmatch(p.name) and p.parent == folder for p in entries):
        shutil.rmtree(folder)


def build_cli(args: list[str] | None = None, run: bool = True) -> LamPOCLI:
    """The CLI over ``args`` (default: the command line); ``run=False`` only parses and instantiates."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return LamPOCLI(
        LamPOModule,
        ProblemDataModule,
        # A fresh RNG callback per CLI: it carries the RNG state between steps (checkpointing.py).
        trainer_defaults={**TRAINER_DEFAULTS, "callbacks": [RNGStateCheckpoint()]},
        save_config_callback=KeepingSaveConfig,
        save_config_kwargs={"overwrite": True},  # KeepingSaveConfig picks a free name first
        parser_class=LamPOArgumentParser,
        args=args,
        run=run,
    )


def main(argv: list[str] | None = None) -> None:
    """Console entry point (``lampo``), also ``python -m lampo_pl``."""
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else ""
    try:
        if command == "export":  # not a Trainer method, so not a LightningCLI subcommand
            from lampo_pl.export import main as export_main

            export_main(args[1:])
        elif command == "warmup":
            from lampo_pl.warmup_cli import main as warmup_main

            warmup_main(args[1:])
        else:
            build_cli(argv)
    except (UserError, ConfigError) as error:
        if os.environ.get("LAMPO_TRACEBACK"):
            raise
        print(f"lampo{' ' + command if command else ''}: error: {error}", file=sys.stderr)
        sys.exit(2)
