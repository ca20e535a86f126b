"""Keep the console for what a user needs: silence four messages that are noise for lampo-pl, and say why.

Installed when ``lampo_pl`` is imported (before bitsandbytes, peft and Lightning are), each by its
exact text, so that any other warning of the same libraries still shows:
1. bitsandbytes (0.50, ``backends/cpu/ops.py``) logs "Failed to load CPU gemm_4bit_forward ... No
   module named 'kernels'" on every import on a CPU with AVX-512 bf16: an optional faster kernel from
   the ``kernels`` package is absent and its built-in CPU path is used instead. It reads like an
   error; 4-bit works without it (tests/test_policy.py).
2. Lightning (2.6, ``logger_connector.py``) advertises a logging service in a "💡 Tip" on every run.
3. peft (0.21, ``peft_model.py``) reads transformers' deprecated ``is_gradient_checkpointing``
   property itself: a FutureWarning about a line that is not ours and that we cannot change.
4. Lightning's ``utilities/_pytree.py`` builds torch's deprecated ``LeafSpec`` (torch >= 2.10):
   likewise not ours.
5. With ``ModelCheckpoint(every_n_train_steps=...)`` and manual optimisation Lightning warns (15
   lines) that the checkpoint holds the weights *after* the optimiser step and suggests saving the
   weights from before it. That advice is wrong for us: a resumed run continues from step k+1, so
   it needs exactly the after-step weights, optimiser moments and RNG state that are saved
   (tests/test_checkpoint_resume.py proves the resumed run bit-identical to an uninterrupted one).
"""

from __future__ import annotations

import logging
import warnings

_LOG_NOISE = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    "lightning.pytorch.utilities.rank_zero": "💡 Tip: For seamless cloud",
    "lightning.fabric.utilities.rank_zero": "💡 Tip: For seamless cloud",
}
_WARNING_NOISE = (
    r"`is_gradient_checkpointing` is deprecated",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_known_noise() -> None:
    """Install the filters above (idempotent: a filter already on a logger is not added twice)."""
    for name, prefix in _LOG_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
    for message in _WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message)
