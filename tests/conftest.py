"""Test-wide settings: never reach a model hub (a hub id then fails in ~2 s instead of ~50 s of retries)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
