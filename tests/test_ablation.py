"""The ablation: presets equal the configs, arm specs, summaries and paired intervals by hand (scipy as the
interval's oracle), a small end-to-end run whose seeds are paired and that resumes."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from lampo_pl.ablation import (
    METHODS,
    AblationSettings,
    RunResult,
    method_preset,
    preset,
    run_ablation,
    summarise,
    to_csv,
    to_markdown,
)
from lampo_pl.ablation import run as run_mod
from lampo_pl.ablation.inference import (
    detectable_effect,
    family,
    family_markdown,
    holm,
    holm_levels,
    interaction_differences,
    paired_t_p,
    paired_t_power,
    power_markdown,
    seeds_needed,
)
from lampo_pl.ablation.methods import binary_arm, reference_arm
from lampo_pl.ablation.paired import paired_csv, paired_differences, paired_markdown, t_interval
from lampo_pl.ablation.provenance import source_digest, versions_report
from lampo_pl.ablation.summary import curve, difference_band, steps_to_threshold, trailing_mean, train_auc
from lampo_pl.settings import MethodArgs

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(METHODS))
def test_method_preset_is_its_config_method_block(name: str) -> None:
    preset_ = METHODS[name]
    block = yaml.safe_load((ROOT / preset_.config).read_text())["model"]["method"]
    assert preset_.method == MethodArgs(**block)


def test_arm_specs() -> None:
    arm = method_preset("lampo+rouge@tau=0.5")
    assert arm.base == "lampo" and arm.density and arm.label == "LamPO + ROUGE-L τ=0.5"
    assert arm.method == replace(METHODS["lampo"].method, tau=0.5)
    assert not method_preset("lampo").density and method_preset("lampo").method == METHODS["lampo"].method
    assert method_preset("dapo@mask_truncated=false@max_refill_rounds=0").method.max_refill_rounds == 0
    assert method_preset("grpo@dual_clip=null").method.dual_clip is None
    assert reference_arm("lampo+rouge@tau=2", "grpo") == "grpo+rouge" and reference_arm("lampo", "grpo") == "grpo"
    assert binary_arm("lampo+rouge@tau=2") == "lampo@tau=2" and binary_arm("grpo") == "grpo"
    for bad, message in [("ppo", "unknown ablation method 'ppo'"), ("lampo rouge", "unknown ablation method"),
                         ("lampo@tau=x", "tau='x' is not a float"), ("lampo@foo=1", "no field 'foo'"),
                         ("lampo@tau=-1", r"tau=-1\.0: allowed tau >= 0")]:
        with pytest.raises(ValueError, match=message):
            method_preset(bad)
    with pytest.raises(ValueError, match="unknown ablation method 'ppo'"):
        AblationSettings(baseline="ppo")


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
    np.testing.assert_allclose(c.std, [statistics.stdev([0.0, 1.0]), 0.0])  # sample SD (ddof 1): √0.5
    assert np.isnan(curve(runs[:2], "kl_ref").mean).all()  # GRPO's runs did not log it: NaN, no warning
    settings = replace(preset("tiny"), methods=("grpo", "lampo"), threshold=0.9, smooth=1)
    rows = summarise(runs, settings)
    assert [r.method for r in rows] == ["grpo", "lampo"]
    grpo = rows[0]
    assert grpo.reached == 2 and grpo.steps_to_threshold_mean == 1.5
    assert grpo.steps_to_threshold_std == pytest.approx(math.sqrt(0.5))  # sample SD of (1, 2)
    assert grpo.final_accuracy_mean == pytest.approx(0.5)
    assert grpo.final_accuracy_std == pytest.approx(statistics.stdev([0.4, 0.6]))  # 0.1414, not the population 0.1
    assert math.isnan(grpo.final_kl_mean) and rows[1].final_kl_mean == pytest.approx(0.1)
    assert rows[1].reached == 0 and math.isnan(rows[1].steps_to_threshold_mean)
    table = to_markdown(rows, settings)
    assert "| GRPO | 1.5 ± 0.7 (2/2) | 0.200 → 0.500 ± 0.141 |" in table and "— (0/1)" in table
    assert "sample SD (ddof = 1)" in table
    assert "| LamPO | — (0/1) | 0.200 → 0.500 |" in table  # one seed: no SD to show
    assert "| 1.000 | — | 1.00 |" in table and "| 0.500 | 0.1000 | 1.00 |" in table  # GRPO (β > 0) logged no KL
    dr = summarise([result("dr_grpo", 0, [0.5], [0.2])], replace(settings, methods=("dr_grpo",)))
    assert "| 0.500 | — (β = 0) |" in to_markdown(dr, settings)  # no KL term: not "nan"
    lines = to_csv(rows).splitlines()
    assert len(lines) == 3 and lines[0].startswith("method,label,seeds,reached")


def test_paired_differences_by_hand_with_scipy_as_the_interval_oracle() -> None:
    # acc curves over 4 steps; threshold 0.5 on the raw accuracy (smooth 1).
    runs = [
        result("grpo", 0, [0.0, 0.2, 0.6, 0.6], [0.3, 0.4]), result("lampo", 0, [0.0, 0.6, 0.6, 0.6], [0.3, 0.5]),
        result("grpo", 1, [0.0, 0.0, 0.2, 0.6], [0.3, 0.4]), result("lampo", 1, [0.2, 0.2, 0.6, 0.8], [0.3, 0.6]),
        result("grpo", 2, [0.0, 0.0, 0.0, 0.0], [0.3, 0.3]), result("lampo", 2, [0.0, 0.0, 0.0, 0.6], [0.3, 0.35]),
        result("lampo", 3, [1.0, 1.0, 1.0, 1.0], [0.3, 0.9]),  # no GRPO run of seed 3: not a pair
    ]
    settings = replace(preset("tiny"), methods=("grpo", "lampo"), seeds=(0, 1, 2, 3), steps=4, threshold=0.5,
                       smooth=1)
    (row,) = paired_differences(runs, settings)
    assert (row.method, row.reference, row.seeds) == ("lampo", "grpo", (0, 1, 2))
    # steps to 0.5: lampo 2, 3, 4 vs grpo 3, 4, never (= steps + 1 = 5): differences -1, -1, -1
    assert row.steps.mean == pytest.approx(-1.0) and row.censored == 1
    assert row.steps.low == pytest.approx(-1.0) and row.steps.high == pytest.approx(-1.0)  # no spread
    auc = [0.45 - 0.35, 0.45 - 0.2, 0.15 - 0.0]
    assert train_auc(runs[1]) == pytest.approx(0.45)
    assert row.auc.mean == pytest.approx(np.mean(auc)) and row.final.mean == pytest.approx(np.mean([0.1, 0.2, 0.05]))
    oracle = stats.ttest_1samp(auc, 0.0).confidence_interval(0.95)
    assert (row.auc.low, row.auc.high) == pytest.approx((oracle.low, oracle.high))
    assert row.auc.excludes_zero == (oracle.low > 0)
    one = t_interval([0.3])
    assert one.n == 1 and one.mean == 0.3 and math.isnan(one.low)
    assert t_interval([math.nan]).n == 0
    table = paired_markdown([row], settings)
    assert "| LamPO | GRPO | 3 | **-1.0 [-1.0, -1.0]** (1) |" in table
    assert paired_csv([row]).splitlines()[1].startswith("lampo,grpo,0 1 2,1,-1.0,")
    band = difference_band(runs, "lampo", "grpo", "acc", smooth=1)
    assert band is not None
    np.testing.assert_allclose(band.mean, [0.2 / 3, 0.6 / 3, 0.4 / 3, 0.8 / 3])
    assert (band.low <= band.mean).all() and (band.high >= band.mean).all()
    np.testing.assert_allclose(difference_band(runs, "lampo", "grpo", "eval").mean, [0.0, 0.35 / 3])
    assert difference_band(runs, "lampo", "dapo") is None


def test_density_effect_pairs_each_rouge_arm_with_its_binary_twin() -> None:
    runs = [result(m, 0, [a], [0.5]) for m, a in [("grpo", 0.2), ("grpo+rouge", 0.4), ("lampo", 0.3),
                                                    ("lampo+rouge", 0.6)]]
    settings = replace(preset("tiny"), methods=("grpo", "grpo+rouge", "lampo", "lampo+rouge"), seeds=(0,), steps=1)
    versus = paired_differences(runs, settings)
    assert [(r.method, r.reference) for r in versus] == [("lampo", "grpo"), ("lampo+rouge", "grpo+rouge")]
    assert versus[1].auc.mean == pytest.approx(0.2)
    density = paired_differences(runs, settings, against="binary")
    assert [(r.method, r.reference) for r in density] == [("grpo+rouge", "grpo"), ("lampo+rouge", "lampo")]
    assert [r.auc.mean for r in density] == pytest.approx([0.2, 0.3])
    with pytest.raises(ValueError, match="against"):
        paired_differences(runs, settings, against="dapo")


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
    settings = replace(preset("tiny"), methods=("grpo", "dr_grpo", "lampo+rouge"), seeds=(0, 1), steps=2,
                       eval_every=1, eval_problems=4, eval_k=2, workers=1, prompts_per_step=2, group_size=4,
                       micro_batch_size=8)
    order: list[str] = []
    results = run_ablation(settings, tmp_path, on_result=lambda r: order.append(r.name))
    assert order == ["grpo_seed0", "dr_grpo_seed0", "lampo+rouge_seed0", "grpo_seed1", "dr_grpo_seed1",
                     "lampo+rouge_seed1"]  # seed by seed: a stopped ablation holds complete pairs
    assert [(r.method, r.seed) for r in results] == [(m, s) for m in settings.methods for s in settings.seeds]
    grpo, _, _, _, lampo, _ = results

    # Paired seeds: step 1 samples from the same initial policy with the same prompts and sampling seed, so
    # every method draws the same responses (the same lengths and entropy); another seed draws others.
    def first(method: str, seed: int) -> tuple[float, float]:
        row = next(r for r in results if (r.method, r.seed) == (method, seed)).steps[0]
        return row["entropy"], row["response_len_mean"]

    for seed in (0, 1):
        assert first("grpo", seed) == first("dr_grpo", seed) == first("lampo+rouge", seed)
    assert first("grpo", 0) != first("grpo", 1)
    assert [row["step"] for row in grpo.steps] == [1.0, 2.0]
    assert [e["step"] for e in grpo.evals] == [0.0, 1.0, 2.0]
    assert "kl_ref" in lampo.steps[-1] and "mean_pair_weight" in lampo.steps[-1] and "reward_density" in lampo.steps[0]
    assert "reward_density" not in grpo.steps[0]
    assert (tmp_path / "runs" / "lampo+rouge_seed1.json").exists()
    assert (tmp_path / "runs" / "grpo_seed0.json").exists() and (tmp_path / "logs" / "grpo_seed0.log").exists()

    def never(*args: object) -> RunResult:
        raise AssertionError("a finished run must be loaded, not re-run")

    monkeypatch.setattr(run_mod, "run_one", never)
    again = run_ablation(settings, tmp_path)
    assert [r.steps for r in again] == [r.steps for r in results]
    with pytest.raises(ValueError, match=r"grpo_seed0\.json was run with other settings \(differing: lr\)"):
        run_ablation(replace(settings, lr=1.0), tmp_path)

    # Provenance: every run file says which code, machine and libraries made it, and how long it took.
    saved = json.loads((tmp_path / "runs" / "grpo_seed0.json").read_text())
    code = saved["provenance"]["code"]
    assert code["source_sha256"] == source_digest() and len(code["commit"]) == 40 and isinstance(code["dirty"], bool)
    assert saved["provenance"]["machine"]["cores"] >= 1
    assert saved["provenance"]["versions"]["torch"] == torch.__version__
    assert {"transformers", "vllm"} <= set(saved["provenance"]["versions"]) and saved["seconds"] > 0
    # Another code version: refused unless asked for; then reused, and the report flags the mix.
    monkeypatch.setattr(run_mod, "source_digest", lambda: "f" * 64)
    with pytest.raises(ValueError, match=r"grpo_seed0\.json was made by other code \(src [0-9a-f]{12}, commit "
                                         r"[0-9a-f]{10}.*now src ffffffffffff\).*--reuse-any-version"):
        run_ablation(settings, tmp_path)
    assert [r.steps for r in run_ablation(settings, tmp_path, reuse_any_version=True)] == [r.steps for r in results]
    old = {k: v for k, v in saved.items() if k != "provenance"}  # a run saved before provenance was recorded
    (tmp_path / "runs" / "grpo_seed0.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"grpo_seed0\.json was made by code of unknown version"):
        run_ablation(settings, tmp_path)
    loaded = run_ablation(settings, tmp_path, reuse_any_version=True)
    mixed, lines = versions_report([r.provenance for r in loaded])
    assert mixed and "- unknown: 1 runs" in lines and f"- src {code['source_sha256'][:12]}: 5 runs" in lines
    assert versions_report([r.provenance for r in results])[0] is False
    (tmp_path / "runs" / "grpo_seed0.json").write_text(json.dumps(saved))
    monkeypatch.undo()
    monkeypatch.setattr(run_mod, "run_one", never)
    (tmp_path / "runs" / "grpo_seed0.json").write_text(json.dumps({"method": "grpo"}))
    with pytest.raises(ValueError, match=r"grpo_seed0\.json is not a saved ablation run"):
        run_ablation(settings, tmp_path)

    from lampo_pl.ablation.plots import PANELS, plot_ablation, plot_differences

    fig = plot_ablation(results, settings.methods, smooth=1, threshold=0.5)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == len(PANELS)
    assert len(titled[0].lines) == 3  # one reward line per method
    diff = plot_differences(results, settings.methods, "grpo", smooth=1)
    panels = [ax for ax in diff.axes if ax.get_title()]
    assert len(panels) == 2  # training accuracy, held-out; no GRPO + ROUGE-L ran, so no row for LamPO + ROUGE-L
    assert [line.get_label() for line in panels[0].lines if not line.get_label().startswith("_")] == ["Dr. GRPO"]


def test_holm_by_hand_on_the_wikipedia_example() -> None:
    # en.wikipedia.org/wiki/Holm–Bonferroni_method, "Example": p = 0.01, 0.04, 0.03, 0.005 at α = 0.05. Sorted:
    # 0.005 < 0.05/4 (reject), 0.01 < 0.05/3 (reject), 0.03 >= 0.05/2 (stop): H1 and H4 rejected. Adjusted p by
    # hand: 4·0.005 = 0.02, 3·0.01 = 0.03, 2·0.03 = 0.06, max(0.06, 1·0.04) = 0.06.
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    # Interval levels: 1 − α/4 and 1 − α/3 for the two rejected; the first unrejected (rank 3) and every later
    # one get 1 − α/2, so their intervals contain 0, like Holm's decisions.
    np.testing.assert_allclose(holm_levels(p), [1 - 0.05 / 3, 1 - 0.05 / 2, 1 - 0.05 / 2, 1 - 0.05 / 4])
    with_nan = holm([0.01, math.nan, 0.04, 0.03, 0.005])  # a cell with < 2 seeds is not in the family
    assert math.isnan(with_nan[1]) and np.allclose(np.delete(with_nan, 1), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # capped at 1


def test_paired_t_p_by_hand() -> None:
    # differences 1, 2, 3: t = 2 / (1/√3) = √12 on 2 df, whose CDF is ½ + t / (2√(2 + t²)) in closed form,
    # so the two-sided p is 1 − t / √(2 + t²) = 1 − √12/√14.
    assert paired_t_p([1.0, 2.0, 3.0]) == pytest.approx(1 - math.sqrt(12 / 14))
    assert paired_t_p([-1.0, -1.0]) == 0.0 and paired_t_p([0.0, 0.0]) == 1.0 and math.isnan(paired_t_p([1.0]))


def test_power_against_gpower_and_simulation() -> None:
    # G*Power 3.1, "t tests - Means: difference from constant (one sample case)", two tails, α 0.05, power 0.8:
    # effect size d = 0.5 needs n = 34 (actual power 0.8078), d = 0.8 needs n = 15.
    assert seeds_needed(0.5, 1.0) == 34 and paired_t_power(0.5, 1.0, 34) == pytest.approx(0.8078, abs=1e-4)
    assert seeds_needed(0.8, 1.0) == 15 and seeds_needed(-0.8, 1.0) == 15
    # The numbers: per-seed SD 0.035 with 6 seeds detects about 0.05; 0.02 needs about 26-27 seeds.
    assert detectable_effect(0.035, 6) == pytest.approx(0.050, abs=0.001) and seeds_needed(0.02, 0.035) == 27
    # Independent check of the noncentral-t power: simulate paired t-tests at the detectable effect.
    rng = np.random.default_rng(0)
    for n in (3, 6):
        delta = detectable_effect(1.0, n)
        draws = rng.normal(delta, 1.0, size=(40_000, n))
        rejected = stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05
        assert rejected.mean() == pytest.approx(0.8, abs=0.01)


def test_holm_family_intervals_agree_with_holm_decisions() -> None:
    runs = []
    gaps = {"lampo": [0.10, 0.12, 0.11, 0.09], "dr_grpo": [0.02, -0.01, 0.03, 0.00], "dapo": [0.05, 0.06, 0.02, 0.07]}
    for seed in range(4):
        runs.append(result("grpo", seed, [0.3, 0.3], [0.3, 0.3 + 0.01 * seed]))
        for arm, gap in gaps.items():
            runs.append(result(arm, seed, [0.3 + gap[seed], 0.3 + gap[seed]], [0.3, 0.3 + 0.01 * seed + gap[seed] / 2]))
    settings = replace(preset("tiny"), methods=("grpo", *gaps), seeds=(0, 1, 2, 3), steps=2, threshold=0.99, smooth=1)
    cells = family(paired_differences(runs, settings))
    assert len(cells) == 9 and {c.outcome for c in cells} == {"steps", "auc", "final"}
    testable = [c for c in cells if math.isfinite(c.p)]
    assert len(testable) == 9  # steps: every run censored, all differences 0 -> p = 1, still in the family (m = 9)
    for c in cells:
        oracle = stats.ttest_1samp(c.interval.values, 0.0)
        if np.ptp(c.interval.values) > 0:
            assert c.p == pytest.approx(oracle.pvalue)
            band = oracle.confidence_interval(c.level)
            assert (c.adjusted.low, c.adjusted.high) == pytest.approx((band.low, band.high))
            assert c.sd == pytest.approx(statistics.stdev(c.interval.values))
        assert c.adjusted.excludes_zero == (c.p_holm < 0.05)
    lampo_auc = next(c for c in cells if c.row.method == "lampo" and c.outcome == "auc")
    assert lampo_auc.p_holm == pytest.approx(min(1.0, 9 * lampo_auc.p))  # the smallest p: Bonferroni's factor m
    text = family_markdown(cells)
    assert "| LamPO | GRPO | Δ train-acc AUC | 4 | +0.105 [" in text and "**+0.105 [" in text
    assert "| Dr. GRPO | GRPO | Δ train-acc AUC | 4 |" in power_markdown(cells)


def test_difference_of_differences_by_hand() -> None:
    # AUC per (arm, seed); the density effect on LamPO minus on GRPO, per seed: (L+r − L) − (G+r − G).
    auc = {("grpo", 0): 0.30, ("grpo+rouge", 0): 0.36, ("lampo", 0): 0.28, ("lampo+rouge", 0): 0.31,
           ("grpo", 1): 0.20, ("grpo+rouge", 1): 0.22, ("lampo", 1): 0.25, ("lampo+rouge", 1): 0.30,
           ("grpo", 2): 0.40, ("grpo+rouge", 2): 0.41, ("lampo", 2): 0.35, ("lampo+rouge", 2): 0.37,
           ("lampo", 3): 0.1, ("lampo+rouge", 3): 0.9}  # seed 3 has no GRPO pair: left out
    runs = [result(m, s, [a, a], [0.5, a]) for (m, s), a in auc.items()]
    settings = replace(preset("tiny"), methods=("grpo", "lampo", "grpo+rouge", "lampo+rouge"), seeds=(0, 1, 2, 3),
                       steps=2, threshold=0.99, smooth=1)
    (row,) = interaction_differences(runs, settings)
    expected = [(0.31 - 0.28) - (0.36 - 0.30), (0.30 - 0.25) - (0.22 - 0.20), (0.37 - 0.35) - (0.41 - 0.40)]
    assert row.seeds == (0, 1, 2) and row.label == "ROUGE-L effect on LamPO" and row.reference_label == "on GRPO"
    assert row.auc.values == pytest.approx(expected) and row.final.values == pytest.approx(expected)
    assert row.steps.values == (0.0, 0.0, 0.0) and row.censored == 3
    # The same number two ways: (L+r − G+r) − (L − G) from the paired tables' own per-seed differences.
    versus = {r.method: r.auc.values for r in paired_differences(runs, settings)}
    assert np.allclose(np.subtract(versus["lampo+rouge"], versus["lampo"][:3]), expected)


def test_resolution_preset_is_the_smollm2_setting_with_more_seeds_and_a_larger_held_out_set() -> None:
    from lampo_pl.ablation.settings import PRESETS, RESOLUTION_ARMS, UNAVAILABLE

    if "smollm2-resolution" in UNAVAILABLE:  # DelTA / GSPO arms not merged yet: refused in one line, not dropped
        assert "smollm2-resolution" not in PRESETS
        with pytest.raises(ValueError, match=r"preset 'smollm2-resolution' is not available in this version: unknown "
                                             r"ablation method '(delta|gspo)'"):
            preset("smollm2-resolution")
        return
    resolution, smollm2 = preset("smollm2-resolution"), preset("smollm2")
    assert resolution.methods == RESOLUTION_ARMS == ("grpo", "lampo", "delta", "gspo", "dapo")
    assert resolution.seeds == tuple(range(24))
    changed = {k for k, v in resolution.run_identity().items() if smollm2.run_identity()[k] != v}
    assert changed == {"eval_every", "eval_problems", "eval_k", "track_kl"}  # training itself as in smollm2


def test_report_only_redraws_every_committed_preset_exactly_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh clone's ``--report-only`` reproduces each committed ``table.md`` byte for byte from the run files."""
    import runpy
    import shutil
    import sys

    from lampo_pl.ablation.settings import PRESETS

    results = ROOT / "bench" / "results" / "learning_efficiency"
    committed = [name for name in PRESETS if (results / name / "runs").is_dir()]
    assert "smollm2" in committed
    monkeypatch.setattr(run_mod, "run_one", lambda *a, **k: pytest.fail("--report-only must not train"))
    for name in committed:
        out = tmp_path / name
        shutil.copytree(results / name / "runs", out / "runs")
        argv = ["learning_efficiency.py", "--preset", name, "--report-only", "--out", str(out)]
        monkeypatch.setattr(sys, "argv", argv)
        runpy.run_path(str(ROOT / "bench" / "learning_efficiency.py"), run_name="__main__")
        assert (out / "table.md").read_text() == (results / name / "table.md").read_text(), name
        assert (out / "paired.csv").read_text() == (results / name / "paired.csv").read_text(), name
        assert (out / "differences.png").stat().st_size > 0


def test_every_interval_quoted_for_the_resolution_run_is_in_its_committed_table() -> None:
    """README's Results and docs/results.md's resolution section quote only intervals the report prints (issue 23:
    numbers a reader can check), so adding seeds without rewriting the prose fails here."""
    import re

    table = (ROOT / "bench" / "results" / "learning_efficiency" / "smollm2-resolution" / "table.md").read_text()
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "docs" / "results.md").read_text()
    quoted = {
        "README Results": readme.split("## Results", 1)[1].split("\n## ", 1)[0],
        "docs/results.md": results.split("### The resolution run", 1)[1].split("\n### ", 1)[0],
    }
    interval = re.compile(r"(?:[−+-]\d\.\d+ )?\[[−+-]\d\.\d+, [−+-]\d\.\d+\]")  # "−0.012 [−0.033, +0.008]", "[a, b]"
    for where, text in quoted.items():
        found = interval.findall(text)
        assert found, f"{where} quotes no interval of the resolution run"
        missing = [i for i in found if i.replace("−", "-") not in table]
        assert not missing, f"{where} quotes intervals that smollm2-resolution/table.md does not print: {missing}"


def test_contrasts_add_paired_rows_between_two_arms_to_the_same_family() -> None:
    """``contrasts``: LamPO minus DelTA seed by seed, a row beside the baseline's and a cell of the same Holm family."""
    aucs = {"grpo": [0.2, 0.3, 0.1], "lampo": [0.4, 0.5, 0.2], "delta": [0.3, 0.2, 0.3]}
    runs = [result(m, seed, [a], [0.5]) for m, seeds in aucs.items() for seed, a in enumerate(seeds)]
    settings = replace(preset("tiny"), methods=("grpo", "lampo", "delta"), seeds=(0, 1, 2), steps=1,
                       contrasts=(("lampo", "delta"),))
    rows = paired_differences(runs, settings)
    assert [(r.method, r.reference) for r in rows] == [("lampo", "grpo"), ("delta", "grpo"), ("lampo", "delta")]
    by_hand = [a - b for a, b in zip(aucs["lampo"], aucs["delta"], strict=True)]
    oracle = stats.ttest_1samp(by_hand, 0.0).confidence_interval(0.95)
    assert rows[2].auc.mean == pytest.approx(np.mean(by_hand))
    assert (rows[2].auc.low, rows[2].auc.high) == pytest.approx((oracle.low, oracle.high))
    assert len(family(rows)) == 9  # 3 rows × 3 outcomes, one family
    assert replace(settings, contrasts=(("lampo", "grpo"),)).run_identity() == settings.run_identity()
    assert len(paired_differences(runs, replace(settings, contrasts=(("lampo", "grpo"),)))) == 2  # no duplicate
    with pytest.raises(ValueError, match="contrast"):
        replace(settings, contrasts=(("lampo", "dapo"),))
    assert preset("smollm2-resolution").contrasts == (("lampo", "delta"),)


def test_report_counts_in_holms_m_only_the_cells_it_tests() -> None:
    """An arm with one seed has no p-value: its 3 cells are listed but not counted in the header's m."""
    from lampo_pl.ablation.report import report_markdown

    aucs = {"grpo": [0.2, 0.3, 0.1], "lampo": [0.4, 0.5, 0.2], "delta": [0.3]}
    runs = [result(m, seed, [a], [0.5, a]) for m, seeds in aucs.items() for seed, a in enumerate(seeds)]
    settings = replace(preset("tiny"), methods=("grpo", "lampo", "delta"), seeds=(0, 1, 2), steps=1)
    text = report_markdown(runs, settings)
    assert "### Corrected for 3 comparisons (Holm)" in text  # LamPO − GRPO × 3 outcomes; DelTA's 3 cells untested
    assert "(2 rows × 3 = 6 cells; the 3 with fewer than 2 seeds are left out)" in text
    full = report_markdown([*runs, result("delta", 1, [0.2], [0.5, 0.2])], settings)
    assert "### Corrected for 6 comparisons (Holm)" in full and "left out" not in full
