"""A callback that caps the process's address space (``RLIMIT_AS``) just before training starts.

Used by tests/test_preflight.py through ``lampo fit --trainer.callbacks+=memory_limit.AddressSpaceLimit``:
the cap is the address space in use at ``on_train_start`` plus ``headroom_mib``, so that the run's worst
step (run by the module's preflight right after this hook) has that much room, and no more.
"""

from __future__ import annotations

import resource
from typing import Any

import lightning as L


def address_space_bytes() -> int:
    """The process's current virtual memory size (VmSize), in bytes."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmSize:"))
    return int(line.split()[1]) * 1024


class AddressSpaceLimit(L.Callback):
    """Cap the address space at ``on_train_start``; ``stop_after_preflight``: end the fit before its first step."""

    def __init__(self, headroom_mib: int = 256, stop_after_preflight: bool = False) -> None:
        self.headroom_mib, self.stop_after_preflight = headroom_mib, stop_after_preflight

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:  # runs before the module's hook
        limit = address_space_bytes() + self.headroom_mib * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        trainer.should_stop = self.stop_after_preflight
