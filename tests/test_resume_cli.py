"""Issue 25 items 2 and 3: ``lampo fit`` writes ``last.ckpt`` by default, ``--ckpt_path last`` continues in
the same ``version_N`` (TensorBoard curves continue), and neither a resumed fit nor a second validate
overwrites an earlier ``config.yaml``."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lampo_pl.cli import free_config_name, main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--data.eval_sets", "[]",
         "--trainer.callbacks", "[]", "--model.sampling.max_new_tokens", "8"]

pytestmark = pytest.mark.usefixtures("one_thread")


def train_steps(folder: Path) -> tuple[list[int], set[str]]:
    """The steps of ``train/reward`` over every TensorBoard file of a run folder, and every scalar tag."""
    steps, tags = [], set()
    for events in sorted(folder.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        steps += [e.step for e in accumulator.Scalars("train/reward")]
        tags |= set(accumulator.Tags()["scalars"])
    return sorted(steps), tags


def test_fit_checkpoints_by_default_and_resumes_in_the_same_folder(tmp_path: Path) -> None:
    save = ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    main(["fit", "-c", SMOKE, *QUIET, *save, "--trainer.max_steps", "2"])
    run = tmp_path / "smoke" / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()  # on by default, saved at the end
    first_config = (run / "config.yaml").read_text()
    main(["fit", "-c", SMOKE, *QUIET, *save, "--trainer.max_steps", "3", "--ckpt_path", "last"])
    assert sorted(p.name for p in (tmp_path / "smoke").iterdir()) == ["version_0"]  # no version_1
    assert (run / "config.yaml").read_text() == first_config  # the first call's config kept
    assert "max_steps: 3" in (run / "config_resume1.yaml").read_text()
    steps, tags = train_steps(run)
    assert steps == [1, 2, 3]  # one curve, one numbering (the step the samples carry)
    assert "train/acc" in tags and not any(t.startswith("train/dynamic_sampling/") for t in tags)  # it is off


def test_free_config_name(tmp_path: Path) -> None:
    assert free_config_name(tmp_path, resumed=True) == "config.yaml"
    (tmp_path / "config.yaml").write_text("")
    assert free_config_name(tmp_path, resumed=True) == "config_resume1.yaml"
    assert free_config_name(tmp_path, resumed=False) == "config_2.yaml"
    (tmp_path / "config_2.yaml").write_text("")
    assert free_config_name(tmp_path, resumed=False) == "config_3.yaml"
