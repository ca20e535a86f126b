"""Lightning's FSDP is refused in one line before any model loads; DDP is not (lampo_pl/strategies.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from lampo_pl.errors import UserError
from lampo_pl.module import LamPOModule
from lampo_pl.strategies import check_strategy


def test_fsdp_is_refused_in_one_line_before_the_model_loads() -> None:
    module = LamPOModule(model="no/such-model")  # loading it would fail with another error
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())  # type: ignore[assignment]
    with pytest.raises(UserError, match=r"^trainer.strategy: fsdp is not supported: .*use trainer.strategy: ddp") as e:
        module.configure_model()
    assert "\n" not in str(e.value) and module.policy_model is None


def test_ddp_and_no_trainer_pass() -> None:
    check_strategy(SimpleNamespace(strategy=DDPStrategy()))
    check_strategy(None)
