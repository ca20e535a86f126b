"""Merge a trained policy adapter into its base model and save a standalone model.

    lampo export --adapter runs/x/version_0/adapter/final --out merged/ [--model <base>] [--dtype bfloat16]
    python -m lampo_pl.export ...   (the same)

The result is a plain ``transformers`` folder (``config.json``, ``model.safetensors``, the
tokenizer, ``generation_config.json``) that ``AutoModelForCausalLM.from_pretrained`` and vLLM load
with no ``peft`` installed. Why each choice:
1. The base is loaded unquantised even when training used 4-bit QLoRA: peft's ``merge_and_unload``
   into 4-bit weights would dequantise, add and requantise, adding rounding error to every weight.
2. The base defaults to the adapter's own ``base_model_name_or_path``, which ``load_policy``
   records as the resolved folder (so ``tiny:`` and ``packaged:`` models export offline).
3. The tokenizer comes from the adapter folder when it has one (``AdapterExport`` saves it there
   with the chat template used in training), else from the base.
4. The folder is written next to ``--out`` and renamed into place: a crash never leaves a
   half-written model that looks complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lampo_pl.policy import resolve_model_source


def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter folder was trained on (its ``adapter_config.json``)."""
    config = json.loads((Path(adapter) / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{adapter}/adapter_config.json names no base model; pass --model")
    return str(base)


def export_merged(
    adapter: str | Path,
    out: str | Path,
    *,
    model: str | None = None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> Path:
    """Merge ``adapter`` into its base and save the standalone model and tokenizer to ``out``.

    Args:
        adapter: A PEFT adapter folder (``AdapterExport``'s ``final`` or ``step_<k>``).
        out: The folder to create.
        model: The base model (hub id, folder, ``tiny:<arch>``, ``packaged:<name>``); default the adapter's own.
        dtype: Torch dtype of the saved weights (e.g. ``bfloat16`` for serving).
        trust_remote_code: Run model code shipped with the base checkpoint.
        overwrite: Replace ``out`` if it exists.
    """
    target = Path(out)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    source = resolve_model_source(model or adapter_base(adapter))
    base = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    has_tokenizer = any((Path(adapter) / name).exists() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(
        str(adapter) if has_tokenizer else source, trust_remote_code=trust_remote_code
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    """``lampo export`` / ``python -m lampo_pl.export``."""
    parser = argparse.ArgumentParser(prog="lampo export", description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="PEFT adapter folder to merge")
    parser.add_argument("--out", required=True, help="folder for the standalone model")
    parser.add_argument("--model", default=None, help="base model; default: the adapter's base_model_name_or_path")
    parser.add_argument("--dtype", default="float32", help="dtype of the saved weights (float32, bfloat16, ...)")
    parser.add_argument("--trust_remote_code", action="store_true", help="run model code shipped with the base")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    path = export_merged(
        args.adapter,
        args.out,
        model=args.model,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
    )
    print(f"merged model saved to {path}")


if __name__ == "__main__":
    main()
