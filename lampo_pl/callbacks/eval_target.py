"""What an evaluation runs on: the model target (the policy, the base model or a saved adapter),
the sampler, and a private RNG stream, so that evaluating never changes what training samples next.

Used by ``BenchmarkEvaluation`` (``callbacks/evaluation.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftModel, get_peft_model_state_dict

from lampo_pl.rewards.custom import import_user_module
from lampo_pl.sampler import NativeSampler, Sampler

EVAL_ADAPTER = "evaluated"  # name under which an adapter folder is loaded next to `policy` and `reference`


def native_sampler(pl_module: Any, generation_batch_size: int | None = None) -> Sampler:
    """The default sampler: lampo-pl's decode loop over the module's model (its active adapter), the module's
    rows per decode call unless ``generation_batch_size`` says otherwise."""
    return NativeSampler(pl_module.policy_model, pl_module.tokenizer, max_context=pl_module.max_context,
                         generation_batch_size=generation_batch_size or pl_module.generation_batch_size)


def load_sampler_factory(path: str) -> Any:
    """``"package.module.name"`` -> the object it names; one clear line when it does not exist."""
    module_name, _, attr = path.rpartition(".")
    module = import_user_module(module_name, f"BenchmarkEvaluation.sampler {path!r}")
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ValueError(f"BenchmarkEvaluation.sampler: cannot import {path!r} ({err})") from err


@contextmanager
def evaluated_adapter(model: PeftModel, target: str) -> Iterator[str | None]:
    """Run the body with ``target`` active; yields the active adapter's name (``None`` for the base model).

    ``target``: ``policy`` (the trained adapter), ``base`` (every adapter off, peft's
    ``disable_adapter()``) or the folder of a PEFT adapter, loaded for the body and removed after.
    """
    if target == "policy":
        yield model.active_adapter
        return
    if target == "base":
        with model.disable_adapter():
            yield None
        return
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    previous = model.active_adapter
    # Lightning runs validate/test under inference mode; weights created there could not be
    # switched by set_adapter afterwards, so the adapter is loaded as ordinary tensors.
    with torch.inference_mode(False):
        model.load_adapter(target, adapter_name=EVAL_ADAPTER, is_trainable=False)
    model.set_adapter(EVAL_ADAPTER)
    try:
        yield EVAL_ADAPTER
    finally:
        model.set_adapter(previous)
        model.delete_adapter(EVAL_ADAPTER)
        for name, param in model.named_parameters():  # set_adapter changes requires_grad; put it back
            param.requires_grad_(flags[name])


def adapter_sha256(model: PeftModel, adapter: str | None) -> str | None:
    """SHA-256 over an adapter's tensors (names sorted): which weights were evaluated, in one string."""
    if adapter is None:
        return None
    digest = hashlib.sha256()
    for name, tensor in sorted(get_peft_model_state_dict(model, adapter_name=adapter).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def forked_rng(seed: int) -> Iterator[None]:
    """A private RNG stream (CPU and the current CUDA device) seeded by ``seed``; the outer one is restored."""
    cuda = torch.cuda.is_available()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)  # the current device only: the one that was forked
        yield


class PrivateRNG:
    """An RNG stream (CPU and the current CUDA device) seeded once; only the bodies of ``active()`` advance it.

    Between sampler calls Lightning's loaders draw from the global generator (a DataLoader draws a base
    seed whenever an iterator starts): those draws must shift neither training's stream nor this one,
    or ``fit`` and ``validate`` would sample differently from the same weights.
    """

    def __init__(self, seed: int) -> None:
        self._cuda = torch.cuda.is_available()
        with forked_rng(seed):
            self._cpu_state, self._cuda_state = self._states()

    def _states(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return torch.get_rng_state(), torch.cuda.get_rng_state() if self._cuda else None

    @contextmanager
    def active(self) -> Iterator[None]:
        """Draw from this stream in the body; the outer stream is restored after."""
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self._cuda else []):
            torch.set_rng_state(self._cpu_state)
            if self._cuda_state is not None:
                torch.cuda.set_rng_state(self._cuda_state)
            yield
            self._cpu_state, self._cuda_state = self._states()
