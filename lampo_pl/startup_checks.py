"""Start-up checks for the machine a run lands on: offline and CPU-only use, each refused in one line.

1. ``check_hub_reachable``: a Hugging Face Hub id (``Qwen/Qwen3-1.7B``) on a machine without network and
   without ``HF_HUB_OFFLINE=1``: ``from_pretrained`` retries for about a minute and ends in a traceback
   of a hundred lines (issue 25 item 4). One HEAD request to the Hub with a short timeout (proxies from
   the environment are used, as ``urllib`` reads them) says it in three seconds instead: not cached →
   refused, naming ``HF_HUB_OFFLINE=1`` and local folders; cached → one warning, and the load goes on
   (huggingface_hub falls back to its cache when the Hub cannot be reached).
2. ``check_accelerator``: ``trainer.accelerator: gpu`` (the Qwen3 and Phi-4 configs) on a machine
   without a CUDA GPU ends in Lightning's ``MisconfigurationException: No supported gpu backend found!``
   after 43 lines; here it is one line naming ``--trainer.accelerator cpu`` and what the CPU needs
   besides (fp16 mixed precision is GPU-only in Lightning; 4-bit and bfloat16 run on a CPU, slowly).
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import torch

from lampo_pl.errors import UserError

log = logging.getLogger(__name__)

HUB_TIMEOUT_S = 3.0
_GPU_ACCELERATORS = ("gpu", "cuda")


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (as huggingface_hub reads it, or in the environment since)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES",
                                                                                              "TRUE")


def hub_unreachable(endpoint: str, timeout_s: float = HUB_TIMEOUT_S) -> str | None:
    """Why ``endpoint`` cannot be reached (one line), or ``None`` when it answered (any HTTP status)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s):
            return None
    except urllib.error.HTTPError:
        return None  # the server answered: the network is there
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        return str(reason).strip().splitlines()[0] if str(reason).strip() else type(error).__name__


def check_hub_reachable(name: str, timeout_s: float = HUB_TIMEOUT_S) -> None:
    """For a Hub id with ``HF_HUB_OFFLINE`` unset: refuse in one line when the Hub is unreachable and the model
    is not cached; warn (and go on from the cache) when it is cached."""
    if hub_offline():
        return
    from huggingface_hub import constants, try_to_load_from_cache

    reason = hub_unreachable(constants.ENDPOINT, timeout_s)
    if reason is None:
        return
    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        log.warning("%s cannot be reached (%s): loading %s from the local cache; set HF_HUB_OFFLINE=1 to skip "
                    "this check", constants.ENDPOINT, reason, name)
        return
    raise UserError(f"model.model={name!r}: {constants.ENDPOINT} cannot be reached ({reason}) and the model is not "
                    "in the local Hugging Face cache; on an offline machine set HF_HUB_OFFLINE=1 and give a local "
                    "folder (or a packaged:/tiny: model), or download it once online")


def check_accelerator(trainer: Mapping[str, Any], cuda_available: bool | None = None) -> None:
    """Refuse a GPU-only trainer setting on a machine without a CUDA GPU, naming the CPU settings instead."""
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    accelerator = str(trainer.get("accelerator") or "auto")
    precision = str(trainer.get("precision") or "")
    if cuda:
        return
    if accelerator in _GPU_ACCELERATORS:
        also = " and --trainer.precision 32-true" if precision.startswith("16") else ""
        raise UserError(f"trainer.accelerator={accelerator!r} but this machine has no CUDA GPU: run with "
                        f"--trainer.accelerator cpu{also} (4-bit and bfloat16 run on a CPU too, slowly; for a small "
                        "model --model.lora.quantization none --model.lora.dtype float32 is the faster CPU path)")
    if precision.startswith("16"):
        raise UserError(f"trainer.precision={precision!r} (fp16 mixed precision) needs a CUDA GPU and this machine "
                        "has none: use --trainer.precision 32-true (or bf16-mixed)")
