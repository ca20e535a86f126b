"""``lampo warmup -c configs/warmup/smoke.yaml``: the supervised cold start from YAML, saved as a PEFT adapter.

    lampo warmup -c configs/warmup/smoke.yaml                  # tiny model, seconds on a CPU
    lampo fit -c configs/smoke.yaml --model.lora.init_adapter runs/warmup/adapter

It trains the ``policy`` LoRA adapter on a problem set's reference solutions with
``lampo_pl.warmup.supervised_warmup`` (why a cold start helps: that module's docstring) and saves it
with the tokenizer as ``AdapterExport`` does, so ``model.lora.init_adapter`` starts both RL adapters
from it. The model, LoRA and prompt settings are the same groups as ``lampo fit``'s (``model``,
``lora``, ``prompt``): give the RL run the same ones, so that it continues from the text the
warm-up trained on. Settings are checked before anything loads, as for ``lampo fit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

import torch
from jsonargparse import ActionConfigFile

from lampo_pl.callbacks.adapter import save_policy_adapter
from lampo_pl.data.prompting import one_shot_example, render_prompt
from lampo_pl.data.registry import check_name, load_problems
from lampo_pl.errors import UserError
from lampo_pl.policy import check_model_available, load_policy
from lampo_pl.settings import LoraArgs, PromptArgs
from lampo_pl.warmup import WarmupArgs, supervised_warmup


@dataclass
class WarmupRun:
    """A supervised warm-up run: which model, which data, where the adapter goes.

    Attributes:
        model: Base model, as ``lampo fit``'s ``model.model`` (Hub id, folder, ``tiny:qwen3`` ...).
        out: Folder for the PEFT adapter (``model.lora.init_adapter`` of the RL run).
        overwrite: Replace ``out`` if it holds an earlier adapter (nothing else is ever replaced).
        train_set: Problem set whose reference solutions are trained on (as ``data.train_set``).
        train_source: Hub dataset id or local file for ``train_set``; null: the set's default.
        train_split: Hub split; null: the set's default.
        limit: Use at most this many problems (``synthetic``: how many to generate).
        seed: Seeds the LoRA initialisation (the draw order has its own ``warmup.seed``).
        lora: Base-model loading and LoRA settings, as ``lampo fit``'s ``model.lora``.
        prompt: Chat-prompt rendering, as ``lampo fit``'s ``model.prompt``.
        warmup: Steps, batch size, learning rate of the warm-up.
    """

    model: str = "tiny:qwen3"
    out: str = "runs/warmup/adapter"
    overwrite: bool = False
    train_set: str = "synthetic"
    train_source: str | None = None
    train_split: str | None = None
    limit: int | None = None
    seed: int = 0
    lora: LoraArgs = field(default_factory=LoraArgs)
    prompt: PromptArgs = field(default_factory=PromptArgs)
    warmup: WarmupArgs = field(default_factory=WarmupArgs)

    def __post_init__(self) -> None:
        check_name(self.train_set)
        target = Path(self.out)
        if target.exists() and not (self.overwrite and (target / "adapter_config.json").is_file()):
            what = "is not an adapter folder" if self.overwrite else "exists; pass --overwrite to replace it"
            raise UserError(f"out={self.out!r} {what}")


def run_warmup(run: WarmupRun) -> tuple[Path, list[float]]:
    """Load the policy, warm its adapter up on reference solutions, save it; return the folder and the losses."""
    check_model_available(run.model)
    problems = [q for q in load_problems(run.train_set, source=run.train_source, split=run.train_split,
                                         limit=run.limit, seed=run.seed) if q.solution]
    if not problems:
        raise UserError(f"train_set={run.train_set!r} has no problems with a reference solution to warm up on")
    torch.manual_seed(run.seed)  # LoRA A's random initialisation
    lo = run.lora
    model, tokenizer = load_policy(
        run.model, dtype=lo.dtype, quantization=lo.quantization, trust_remote_code=lo.trust_remote_code,
        lora_r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=lo.target_modules,
        init_adapter=lo.init_adapter, gradient_checkpointing=lo.gradient_checkpointing,
        attn_implementation=lo.attn_implementation,
    )
    p = run.prompt
    few_shot = one_shot_example(p.instruction_or_none) if p.one_shot else ()  # the RL run's own: the same prompt
    prompts = [render_prompt(tokenizer, q, system_prompt=p.system_prompt, enable_thinking=p.enable_thinking,
                             few_shot=few_shot, instruction=p.instruction_or_none) for q in problems]
    every = max(1, run.warmup.steps // 10)

    def report(step: int, loss: float) -> None:
        if step % every == 0 or step == run.warmup.steps - 1:
            print(f"warm-up step {step + 1}/{run.warmup.steps}: loss {loss:.4f}")

    losses = supervised_warmup(model, tokenizer, prompts, [q.solution or "" for q in problems], run.warmup,
                               on_step=report)
    owner = SimpleNamespace(policy_model=model, tokenizer=tokenizer)
    return save_policy_adapter(owner, run.out, base_model=run.model), losses


def main(argv: list[str] | None = None) -> None:
    """``lampo warmup [-c CONFIG] [--key value ...]``."""
    from lampo_pl.cli import LamPOArgumentParser

    parser = LamPOArgumentParser(prog="lampo warmup", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config (configs/warmup/*.yaml)")
    parser.add_class_arguments(WarmupRun)  # flat keys: model, out, lora.r, warmup.steps ...
    config = parser.parse_args(argv)
    try:
        init = parser.instantiate_classes(config)
        run = WarmupRun(**{f.name: init[f.name] for f in fields(WarmupRun)})
    except ValueError as error:
        from lampo_pl.cli import condense

        # The groups are lampo fit's (named model.lora, model.prompt there); here they sit at the top.
        message = str(error) if isinstance(error, UserError) else condense(str(error))
        message = message.replace("model.lora.", "lora.").replace("model.prompt.", "prompt.")
        raise UserError(message) from error
    folder, losses = run_warmup(run)
    first, last = (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))
    print(f"warm-up adapter saved to {folder} (loss {first:.4f} -> {last:.4f}); start RL from it with "
          f"--model.lora.init_adapter {folder}")
