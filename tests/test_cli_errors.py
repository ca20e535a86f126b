"""Issue 13: bad settings, typos, missing names and files are refused in one line before anything loads; a resume
that finds nothing is an error; finishing is idempotent; validate and failed fits leave no run folders; the
console is quiet and the progress bar counts steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lampo_pl.module as module_file
from lampo_pl.callbacks import AdapterExport
from lampo_pl.callbacks.progress import StepProgressBar
from lampo_pl.checkpointing import AtomicCheckpointIO
from lampo_pl.cli import condense, find_last_checkpoint, main
from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.errors import UserError
from lampo_pl.module import LamPOModule
from lampo_pl.rollout import SamplingParams
from lampo_pl.settings import ComputeArgs, LoraArgs, MethodArgs

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading the model fails the test: every refusal below must come before it."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(module_file, "load_policy", refuse)


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``lampo <argv>``; assert exit status 2 and exactly one error line; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lampo ")]
    assert len(lines) == 1 and "Traceback" not in err and "usage:" not in err, err
    return lines[0]


BAD_VALUES = [
    ("--model.method.eps_low=2", "model.method.eps_low=2.0: allowed 0 <= eps_low < 1"),
    ("--model.method.eps_high=-0.1", "model.method.eps_high=-0.1: allowed eps_high >= 0"),
    ("--model.method.tau=-1", "model.method.tau=-1.0: allowed tau >= 0"),
    ("--model.method.dual_clip=0.5", "model.method.dual_clip=0.5: allowed null or dual_clip > 1"),
    ("--model.method.beta=-0.1", "model.method.beta=-0.1: allowed beta >= 0"),
    ("--model.method.tis_cap=0", "model.method.tis_cap=0.0: allowed null or tis_cap > 0"),
    ("--model.method.max_refill_rounds=-1", "model.method.max_refill_rounds=-1: allowed an integer >= 0"),
    ("--model.sampling.vllm_gpu_memory=1.5", "model.sampling.vllm_gpu_memory=1.5: allowed 0 < vllm_gpu_memory <= 1"),
    ("--model.optim.lambda_lr=-1", "model.optim.lambda_lr=-1.0: allowed lambda_lr >= 0"),
    ("--model.optim.lr=-1", "model.optim.lr=-1.0: allowed lr >= 0"),
    ("--model.lora.dropout=1.5", "model.lora.dropout=1.5: allowed 0 <= dropout < 1"),
    ("--model.sampling.top_p=0", "model.sampling.top_p=0.0: allowed 0 < top_p <= 1"),
    ("--model.rewards.density=-1", "model.rewards.density=-1.0: allowed density >= 0"),
    ("--model.group_size=0", "group_size (0)"),
    ("--model.compute.micro_batch_size=7", "micro_batch_size=7 does not divide the 8 responses"),
    ("--model.method.tau=abc", "model.method.tau: Expected a float. Got value: abc"),
    ("--model.method.estimator=ppo", "model.method.estimator: Expected one of"),
    ("--model.methd.tau=1", "unrecognized arguments: --model.methd.tau=1"),
    ("--data.train_set=nope", "unknown problem set 'nope'"),
    ("--model.model=Org/not-cached-model", "model.model='Org/not-cached-model' is not in the local Hugging Face"),
    ("--model.model=./no/such/folder", "model.model='./no/such/folder': no such folder"),
    ("--model.lora.init_adapter=/no/adapter", "model.lora.init_adapter='/no/adapter'"),
    ("--ckpt_path=/no/such.ckpt", "checkpoint /no/such.ckpt does not exist"),
]


@pytest.mark.parametrize(("arg", "expected"), BAD_VALUES, ids=[a for a, _ in BAD_VALUES])
def test_bad_setting_is_one_line_before_anything_loads(
    arg: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model_load: None
) -> None:
    line = refused(capsys, ["fit", "-c", SMOKE, arg, "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert line.startswith("lampo fit: error: ") and expected in line, line
    assert not any(tmp_path.iterdir())  # no run folder either


def test_an_init_adapter_with_other_lora_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           no_model_load: None) -> None:
    """Issue 25 item 6: PEFT would train the adapter's r = 8 while config.yaml records r = 16."""
    adapter = tmp_path / "warm"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}')
    base = ["fit", "-c", SMOKE, "--model.lora.init_adapter", str(adapter), "--trainer.logger", "false"]
    line = refused(capsys, [*base, "--model.lora.r=16"])
    assert "model.lora.init_adapter=" in line and "r=16 but the adapter has 8" in line, line
    line = refused(capsys, [*base, "--model.lora.target_modules=[q_proj]"])
    assert "target_modules=['q_proj'] but the adapter has ['q_proj', 'v_proj']" in line, line
    LoraArgs(r=8, alpha=16, init_adapter=str(adapter))  # the adapter's own values are accepted
    LoraArgs(r=8, alpha=16, target_modules=["v_proj", "q_proj"], init_adapter=str(adapter))


@pytest.mark.parametrize("command", ["validate", "test"])
def test_validate_and_test_refuse_the_same_way(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               no_model_load: None) -> None:
    line = refused(capsys, [command, "-c", SMOKE, "--model.method.eps_low=2"])
    assert line == f"lampo {command}: error: model.method.eps_low=2.0: allowed 0 <= eps_low < 1"
    line = refused(capsys, [command, "-c", SMOKE, "--adapter", str(tmp_path / "missing")])
    assert f"adapter folder {tmp_path / 'missing'} does not exist" in line


def test_yaml_typo_names_the_key_without_a_usage_dump(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  method: {tua: 1.0}\n")
    assert refused(capsys, ["fit", "-c", SMOKE, "-c", str(typo)]) == "lampo fit: error: model.method: Option 'tua' " \
                                                                      "is not accepted"
    typo.write_text("model:\n  methd: {tau: 1.0}\n")
    assert "model.methd.tau" in refused(capsys, ["fit", "-c", SMOKE, "-c", str(typo)])


def test_callback_settings_are_checked_before_anything_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             no_model_load: None) -> None:
    config = tmp_path / "eval.yaml"
    config.write_text("trainer:\n  callbacks:\n    - class_path: lampo_pl.callbacks.BenchmarkEvaluation\n"
                      "      init_args: {k: 0}\n")
    line = refused(capsys, ["fit", "-c", SMOKE, "-c", str(config), "--trainer.logger", "false"])
    assert line == "lampo fit: error: BenchmarkEvaluation.k=0: allowed an integer >= 1"


def test_export_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(capsys, ["export", "--adapter", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert line == f"lampo export: error: adapter folder {tmp_path / 'nothing'} does not exist"


def test_condense_keeps_the_innermost_reason() -> None:
    message = ('Parser key "model.method":\n  Does not validate against any of the Union subtypes\n  Errors:\n'
               '    - tau: Expected a float. Got value: abc\n    - Expected a <class \'NoneType\'>\n'
               "  Given value: NestedArg(key='tau', val='abc')")
    assert condense(message) == "model.method.tau: Expected a float. Got value: abc"


def test_the_console_shows_the_error_and_no_noise(tmp_path: Path) -> None:
    """A real process: none of the import-time noise (bitsandbytes, Lightning's tip) before the one error line."""
    result = subprocess.run(
        [sys.executable, "-m", "lampo_pl", "fit", "-c", SMOKE, "--model.method.eps_low=2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={"PATH": "", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2
    shown = (result.stdout + result.stderr).splitlines()
    assert shown[-1] == "lampo fit: error: model.method.eps_low=2.0: allowed 0 <= eps_low < 1"
    assert not [line for line in shown if "gemm_4bit" in line or "Tip" in line or "Traceback" in line], shown


# ---- resume: nothing found is an error; the newest checkpoint across versions otherwise --------------


def test_ckpt_path_last_with_nothing_to_resume_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           no_model_load: None) -> None:
    line = refused(capsys, ["fit", "-c", SMOKE, "--ckpt_path=last", "--trainer.logger.init_args.save_dir",
                            str(tmp_path)])
    assert "--ckpt_path last: no checkpoint found" in line and "nothing to resume" in line
    assert not any(tmp_path.rglob("version_*"))


def test_ckpt_path_last_finds_the_newest_checkpoint_across_versions(tmp_path: Path) -> None:
    import os

    old, new = tmp_path / "version_0/checkpoints/step=2.ckpt", tmp_path / "version_1/checkpoints/step=4.ckpt"
    for age, path in ((100, old), (0, new)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (path.stat().st_mtime - age,) * 2)
    (tmp_path / "version_2").mkdir()  # the new run's own, empty folder: where Lightning alone looks
    trainer = SimpleNamespace(checkpoint_callbacks=[], logger=SimpleNamespace(root_dir=str(tmp_path)),
                              default_root_dir=str(tmp_path))
    assert find_last_checkpoint(trainer) == new


# ---- finishing is idempotent; failed fits and validate leave no folders --------------------------------


def tiny_fit(tmp: Path, max_steps: int, ckpt_path: Path | None = None) -> None:
    L.seed_everything(0, verbose=False)
    module = LamPOModule(model="tiny:qwen3", group_size=2, prompts_per_step=2, lora=LoraArgs(r=4, alpha=8),
                         sampling=SamplingParams(max_new_tokens=4), method=MethodArgs(),
                         compute=ComputeArgs(micro_batch_size=4))
    data = ProblemDataModule(train_set="synthetic", eval_sets=[], prompts_per_step=2, synthetic_size=8,
                             synthetic_levels=[1])
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, plugins=[AtomicCheckpointIO()],
        callbacks=[ModelCheckpoint(dirpath=tmp / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1),
                   AdapterExport(dirpath=str(tmp / "adapter"))],
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)


def test_resuming_a_finished_run_still_writes_the_final_adapter(tmp_path: Path) -> None:
    tiny_fit(tmp_path, max_steps=2)
    final = tmp_path / "adapter" / "final"
    weights = (final / "adapter_model.safetensors").read_bytes()
    for path in final.iterdir():  # killed after the last checkpoint, before the final export
        path.unlink()
    final.rmdir()
    tiny_fit(tmp_path, max_steps=2, ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")
    assert (final / "adapter_model.safetensors").read_bytes() == weights


def test_failed_fit_leaves_no_empty_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise UserError("the model cannot load")  # after the run folder and its config.yaml were written

    monkeypatch.setattr(module_file, "load_policy", fail)
    line = refused(capsys, ["fit", "-c", SMOKE, "--trainer.logger.init_args.save_dir", str(tmp_path)])
    assert line == "lampo fit: error: the model cannot load"
    assert not list(tmp_path.rglob("version_*"))


def test_validate_reuses_one_folder(tmp_path: Path) -> None:
    argv = ["validate", "-c", SMOKE, "--limit", "1", "--k", "1", "--data.synthetic_eval_size", "1",
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    main(argv)
    main(argv)
    assert sorted(p.name for p in (tmp_path / "smoke").iterdir()) == ["validate"]


def test_progress_bar_counts_the_runs_steps_without_v_num() -> None:
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_steps=30, progress_bar_metrics={"reward": 0.5}, loggers=[])  # type: ignore
    assert bar.total_train_batches == 30  # not the epoch's 21 batches after a resume
    assert bar._get_train_description(0) == "Training"  # not "Epoch 0/-2"
    assert bar.get_metrics(bar._trainer, torch.nn.Module()) == {"reward": 0.5}  # type: ignore[arg-type]
