"""The ablation: presets equal the configs, summaries by hand, a small end-to-end run that resumes."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import yaml

from lampo_pl.ablation import METHODS, AblationSettings, RunResult, preset, run_ablation, summarise, to_csv, to_markdown
from lampo_pl.ablation import run as run_mod
from lampo_pl.ablation.summary import curve, steps_to_threshold, trailing_mean
from lampo_pl.settings import MethodArgs

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(METHODS))
def test_method_preset_is_its_config_method_block(name: str) -> None:
    preset_ = METHODS[name]
    block = yaml.safe_load((ROOT / preset_.config).read_text())["model"]["method"]
    assert preset_.method == MethodArgs(**block)


def result(method: str, seed: int, acc: list[float], evals: list[float], kl: float | None = None) -> RunResult:
    steps = [{"step": float(i + 1), "acc": a, "reward": a, **({"kl_ref": kl} if kl is not None else {})}
             for i, a in enumerate(acc)]
    ev = [{"step": float(10 * i), "avg_at_k": v, "pass_at_k": min(1.0, 2 * v)} for i, v in enumerate(evals)]
    return RunResult(method, seed, steps, ev, seconds=float(len(acc)), settings={})


def test_trailing_mean_and_steps_to_threshold_by_hand() -> None:
    np.testing.assert_allclose(trailing_mean(np.array([0.0, 1.0, 0.5, math.nan]), 2), [0.0, 0.5, 0.75, 0.5])
    r = result("lampo", 0, [0.2, 0.4, 0.8, 0.9, 0.3], [0.1])
    # trailing means over 2 steps: 0.2, 0.3, 0.6, 0.85, 0.6 -> first >= 0.6 at the 3rd step (step 3)
    assert steps_to_threshold(r, 0.6, 2) == 3
    assert steps_to_threshold(r, 0.9, 2) is None
    assert steps_to_threshold(r, 0.9, 1) == 4


def test_curve_and_summary_over_seeds() -> None:
    runs = [result("grpo", 0, [0.0, 1.0], [0.2, 0.4]), result("grpo", 1, [1.0, 1.0], [0.2, 0.6]),
            result("lampo", 0, [0.5, 0.5], [0.2, 0.5], kl=0.1)]
    c = curve(runs[:2], "acc")
    np.testing.assert_allclose(c.mean, [0.5, 1.0])
    np.testing.assert_allclose(c.std, [0.5, 0.0])
    assert np.isnan(curve(runs[:2], "kl_ref").mean).all()  # GRPO's runs did not log it: NaN, no warning
    settings = replace(preset("tiny"), methods=("grpo", "lampo"), threshold=0.9, smooth=1)
    rows = summarise(runs, settings)
    assert [r.method for r in rows] == ["grpo", "lampo"]
    grpo = rows[0]
    assert grpo.reached == 2 and grpo.steps_to_threshold_mean == 1.5 and grpo.steps_to_threshold_std == 0.5
    assert grpo.final_accuracy_mean == pytest.approx(0.5) and grpo.final_accuracy_std == pytest.approx(0.1)
    assert math.isnan(grpo.final_kl_mean) and rows[1].final_kl_mean == pytest.approx(0.1)
    assert rows[1].reached == 0 and math.isnan(rows[1].steps_to_threshold_mean)
    table = to_markdown(rows, settings)
    assert "| GRPO | 1.5 ± 0.5 (2/2) | 0.200 → 0.500 ± 0.100 |" in table and "— (0/1)" in table
    lines = to_csv(rows).splitlines()
    assert len(lines) == 3 and lines[0].startswith("method,label,seeds,reached")


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown ablation method 'ppo'"):
        AblationSettings(methods=("ppo",))
    with pytest.raises(ValueError, match="steps=0"):
        AblationSettings(steps=0)
    with pytest.raises(ValueError, match="distinct seeds"):
        AblationSettings(seeds=(1, 1))
    with pytest.raises(ValueError, match="unknown ablation preset"):
        preset("huge")


def test_small_ablation_runs_saves_resumes_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = replace(preset("tiny"), methods=("grpo", "lampo_density"), seeds=(0,), steps=2, eval_every=1,
                       eval_problems=4, eval_k=2, workers=1, prompts_per_step=2, group_size=4, micro_batch_size=8)
    results = run_ablation(settings, tmp_path)
    assert [(r.method, r.seed) for r in results] == [("grpo", 0), ("lampo_density", 0)]
    grpo, lampo = results
    assert [row["step"] for row in grpo.steps] == [1.0, 2.0]
    assert [e["step"] for e in grpo.evals] == [0.0, 1.0, 2.0]
    assert "kl_ref" in lampo.steps[-1] and "mean_pair_weight" in lampo.steps[-1] and "reward_density" in lampo.steps[0]
    assert "reward_density" not in grpo.steps[0]
    assert (tmp_path / "runs" / "grpo_seed0.json").exists() and (tmp_path / "logs" / "grpo_seed0.log").exists()

    def never(*args: object) -> RunResult:
        raise AssertionError("a finished run must be loaded, not re-run")

    monkeypatch.setattr(run_mod, "run_one", never)
    again = run_ablation(settings, tmp_path)
    assert [r.steps for r in again] == [r.steps for r in results]
    with pytest.raises(ValueError, match=r"grpo_seed0\.json was run with other settings \(differing: lr\)"):
        run_ablation(replace(settings, lr=1.0), tmp_path)
    (tmp_path / "runs" / "grpo_seed0.json").write_text(json.dumps({"method": "grpo"}))
    with pytest.raises(ValueError, match=r"grpo_seed0\.json is not a saved ablation run"):
        run_ablation(settings, tmp_path)

    from lampo_pl.ablation.plots import PANELS, plot_ablation

    fig = plot_ablation(results, settings.methods, smooth=1, threshold=0.5)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == len(PANELS)
    assert len(titled[0].lines) == 2  # one reward line per method
