"""Every file in configs/ parses and instantiates; the real-model ones also build with a tiny stand-in model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lampo_pl.cli import build_cli
from lampo_pl.module import LamPOModule

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))
REAL_MODEL = [c for c in CONFIGS if c.stem not in ("demo", "smoke")]


def test_every_config_is_tested() -> None:
    assert {c.stem for c in CONFIGS} >= {"demo", "smoke", "qwen3-1.7b", "qwen3-4b", "phi4-mini",
                                         "qwen3-1.7b-grpo", "qwen3-1.7b-dr-grpo", "qwen3-1.7b-dapo",
                                         "qwen3-1.7b-lambda-grpo", "qwen3-1.7b-gspo", "qwen3-1.7b-cispo",
                                         "qwen3-1.7b-sapo", "qwen3-1.7b-delta"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_instantiates(config: Path, tmp_path: Path) -> None:
    cli = build_cli(["-c", str(config), "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                     "--trainer.default_root_dir", str(tmp_path)], run=False)
    assert isinstance(cli.model, LamPOModule)
    raw = yaml.safe_load(config.read_text())
    assert cli.model.model_name == raw["model"]["model"]
    assert cli.model.prompts_per_step == cli.datamodule.prompts_per_step  # linked once
    assert cli.model.method.estimator == raw["model"]["method"]["estimator"]
    assert cli.trainer.max_steps == raw["trainer"]["max_steps"]


@pytest.mark.parametrize("config", REAL_MODEL, ids=lambda p: p.stem)
def test_real_model_config_builds_with_a_tiny_stand_in(config: Path, tmp_path: Path) -> None:
    """The model id is swapped for a tiny one of the same family; every other setting (4-bit, LoRA, dtype,
    gradient checkpointing, attention) is the config's own."""
    arch = "phi3" if "phi" in config.stem else "qwen3"
    cli = build_cli(["-c", str(config), "--trainer.accelerator", "cpu", "--trainer.logger", "false",
                     "--model.model", f"tiny:{arch}", "--trainer.default_root_dir", str(tmp_path)], run=False)
    cli.model.configure_model()
    names = [n for n, p in cli.model.policy_model.named_parameters() if p.requires_grad]
    assert names and all(".policy." in n for n in names)


def test_baselines_differ_from_lampo_only_in_method() -> None:
    lampo = yaml.safe_load(Path(CONFIGS[0].parent, "qwen3-1.7b.yaml").read_text())
    for name in ("grpo", "dr-grpo", "dapo", "lambda-grpo", "gspo", "cispo", "sapo", "delta"):
        other = yaml.safe_load(Path(CONFIGS[0].parent, f"qwen3-1.7b-{name}.yaml").read_text())
        other["model"].pop("method")
        other["trainer"]["logger"]["init_args"]["name"] = "qwen3-1.7b"
        mine = {**lampo, "model": {k: v for k, v in lampo["model"].items() if k != "method"}}
        assert other == mine, name
