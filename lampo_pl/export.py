"""Merge a trained policy adapter into its base model and save a standalone model.

    lampo export --adapter runs/x/version_0/adapter/final --out merged/ [--model <base>] [--dtype bfloat16]
    python -m lampo_pl.export ...   (the same)

The result is a plain ``transformers`` folder (``config.json``, ``model.safetensors``, the
tokenizer, ``generation_config.json``) that ``AutoModelForCausalLM.from_pretrained`` and vLLM load
with no ``peft`` installed. Why each choice:
1. The base is loaded unquantised even when training used 4-bit QLoRA: peft's ``merge_and_unload``
   into 4-bit weights would dequantise, add and requantise, adding rounding error to every weight.
2. The base defaults to the adapter's own ``base_model_name_or_path``, which ``load_policy``
   records as the model's public name (a Hub id, ``tiny:qwen3``, ``packaged:...``), resolved here
   again, so an adapter trained on one machine exports on another.
3. The tokenizer comes from the adapter folder when it has one (``AdapterExport`` saves it there
   with the chat template used in training), else from the base.
4. The folder is written next to ``--out`` and swapped into place (``lampo_pl.atomic``): a crash
   never leaves a half-written model that looks complete, and with ``--overwrite`` the previous
   export is set aside until the new one is complete.
5. Nothing is deleted that export did not write: ``--overwrite`` replaces only an empty folder or a
   previous export (its ``lampo-export.json`` lists the files it wrote), and a target that is, or
   contains, the adapter or the working folder is refused. Every check runs before the base loads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NoReturn

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lampo_pl.atomic import write_dir_atomic
from lampo_pl.errors import UserError
from lampo_pl.policy import check_adapter_folder, resolve_model_source

MANIFEST = "lampo-export.json"  # the files an export wrote: what a later --overwrite may replace


class ExportError(UserError):
    """An export target that exists, holds files export did not write, or would swallow the adapter or cwd."""


def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter folder was trained on (its ``adapter_config.json``)."""
    check_adapter_folder(adapter)
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
        overwrite: Replace ``out`` if it holds an earlier export (nothing else is ever deleted).
    """
    target = Path(out)
    check_adapter_folder(adapter)
    check_export_target(target, Path(adapter), overwrite)
    source = resolve_model_source(model or adapter_base(adapter))
    base = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    has_tokenizer = any((Path(adapter) / name).exists() for name in ("tokenizer.json", "tokenizer_config.json"))
    tokenizer = AutoTokenizer.from_pretrained(
        str(adapter) if has_tokenizer else source, trust_remote_code=trust_remote_code
    )

    def build(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        (tmp / MANIFEST).write_text(json.dumps({"adapter": str(adapter), "files": files}, indent=2))

    return write_dir_atomic(target, build)


def check_export_target(target: Path, adapter: Path, overwrite: bool) -> None:
    """Refuse a target whose replacement would delete what export did not write (module docstring, point 5)."""
    resolved = target.resolve()
    for name, protected in (("the adapter folder", adapter.resolve()), ("the working folder", Path.cwd().resolve())):
        if resolved == protected or resolved in protected.parents:
            raise ExportError(f"--out {target} is or contains {name} ({protected}); choose a new folder")
    if not target.exists():
        return
    if not target.is_dir():
        raise ExportError(f"--out {target} exists and is not a folder")
    present = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    if present and not overwrite:
        raise ExportError(f"--out {target} exists; pass --overwrite to replace an earlier export")
    manifest = target / MANIFEST
    written = set(json.loads(manifest.read_text())["files"]) | {MANIFEST} if manifest.is_file() else set()
    foreign = sorted(present - written)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
        raise ExportError(f"--out {target} holds {len(foreign)} file(s) lampo export did not write ({shown}); "
                          "--overwrite replaces only an earlier export: choose another folder")


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line (lampo_pl.cli prints it), not usage then the error
        raise ExportError(message)


def main(argv: list[str] | None = None) -> None:
    """``lampo export`` / ``python -m lampo_pl.export``."""
    parser = _OneLineParser(prog="lampo export", description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="PEFT adapter folder to merge")
    parser.add_argument("--out", required=True, help="folder for the standalone model")
    parser.add_argument("--model", default=None, help="base model; default: the adapter's base_model_name_or_path")
    parser.add_argument("--dtype", default="float32", help="dtype of the saved weights (float32, bfloat16, ...)")
    parser.add_argument("--trust_remote_code", action="store_true", help="run model code shipped with the base")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier export")
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
    import sys

    from lampo_pl.cli import main as lampo_main

    lampo_main(["export", *sys.argv[1:]])  # errors as one line, as from `lampo export`
