"""Issue 25 item 4: an offline machine without HF_HUB_OFFLINE and a GPU config on a CPU machine are one line each."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest

import lampo_pl.startup_checks as checks
from lampo_pl.cli import main
from lampo_pl.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def online_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE unset, as on a user's machine (the test suite sets it)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def no_network(request: object, timeout: float) -> None:
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")


def test_an_uncached_hub_id_on_an_offline_machine_is_one_line(
    online_setting: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(checks.urllib.request, "urlopen", no_network)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(ROOT / "configs/smoke.yaml"), "--model.model", "Org/not-cached-model",
              "--trainer.logger", "false"])
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lampo ")]
    assert line.startswith("lampo fit: error: model.model='Org/not-cached-model': https://huggingface.co cannot be "
                           "reached ([Errno -3] Temporary failure in name resolution)"), line
    assert "HF_HUB_OFFLINE=1" in line and "local folder" in line


def test_the_hub_is_not_asked_when_offline_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(checks.urllib.request, "urlopen", lambda *a, **k: pytest.fail("asked the Hub"))
    checks.check_hub_reachable("Org/any")


def test_a_cached_model_loads_with_a_warning(online_setting: None, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    import huggingface_hub

    monkeypatch.setattr(checks.urllib.request, "urlopen", no_network)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda name, file: "/cache/config.json")
    checks.check_hub_reachable("Org/cached")
    assert "set HF_HUB_OFFLINE=1" in caplog.text


def test_an_answering_hub_passes(online_setting: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(request: object, timeout: float) -> None:
        raise urllib.error.HTTPError("https://huggingface.co", 404, "Not Found", None, None)  # type: ignore[arg-type]

    monkeypatch.setattr(checks.urllib.request, "urlopen", not_found)
    assert checks.hub_unreachable("https://huggingface.co") is None
    checks.check_hub_reachable("Org/not-cached-model")


def test_a_gpu_config_on_a_cpu_machine_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(checks.torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(ROOT / "configs/qwen3-1.7b.yaml")])
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lampo ")]
    assert line.startswith("lampo fit: error: trainer.accelerator='gpu' but this machine has no CUDA GPU: run with "
                           "--trainer.accelerator cpu"), line
    assert "--model.lora.quantization none" in line


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        ({"accelerator": "cuda", "precision": "16-mixed"}, "--trainer.accelerator cpu and --trainer.precision 32-true"),
        ({"accelerator": "auto", "precision": "16-mixed"}, "trainer.precision='16-mixed' (fp16 mixed precision)"),
        ({"accelerator": "cpu", "precision": "16-mixed"}, "use --trainer.precision 32-true"),
    ],
)
def test_gpu_only_settings_name_the_cpu_fix(trainer: dict, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        checks.check_accelerator(trainer, cuda_available=False)
    checks.check_accelerator(trainer, cuda_available=True)  # a GPU machine: nothing to say
    checks.check_accelerator({"accelerator": "cpu", "precision": "bf16-mixed"}, cuda_available=False)
