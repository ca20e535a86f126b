"""Step time of one RL configuration in lampo-pl and in TRL's GRPOTrainer, alternating in one run.

Both frameworks train the same tiny model (``--model``, built offline) with the same tokenizer, the
same rendered prompts, the same deterministic reward (a hash of the response text), the same LoRA
(r, alpha = 2r, no dropout, all-linear) and the same sampling; every response is forced to exactly
``--max-new-tokens`` tokens (``min_new_tokens``) so that both do identical work per step. Each runs
its own ordinary loop (a Lightning ``Trainer`` around ``LamPOModule``; ``GRPOTrainer.train()``) in
its own process, and a baton (two semaphores) lets exactly one of them run at a time, one step
each, so the two never compete for the CPU and drift in machine speed hits both alike. A step is
timed from the end of the previous one (minus the wait for the baton), so loop overhead (data
loading, hooks, logging) counts for both. Processes, not threads: once a second thread has used
torch, libgomp runs two OpenMP teams on 2 cores and every parallel region of either thread got
about 2× slower (measured: 0.11 s → 0.22 s for the same matmul loop, the other thread idle).

Matching semantics (TRL 1.16, ``trl/trainer/grpo_trainer.py``):
- aggregation: ``_compute_loss`` (~L3153-3175): ``loss_type="grpo"`` = per-sequence token mean then
  batch mean = our ``seq_mean_token_mean``; ``"dapo"`` divides by ``num_items_in_batch``, the loss
  tokens of the whole generation batch (~L2498), times ``grad_accum / steps_per_generation`` = 1 here,
  = our ``token_mean``; ``"dr_grpo"`` divides by ``N · max_completion_length`` = ``seq_mean_token_sum_norm``.
- advantages: ``_generate_and_score_completions`` (~L2767-2787): ``scale_rewards="group"`` is our
  ``grpo`` estimator (TRL adds 1e-4 to the std, we add 1e-6), ``"none"`` is ``dr_grpo``.
- π_old: at μ = 1 with aligned generation TRL takes no old pass (~L2642-2657) and uses the detached
  current log-probs (~L3065), as lampo-pl does. The reference (β > 0) is the PEFT model with its
  adapter disabled (``use_adapter(model, None)``, ~L2722); ours is the frozen ``reference`` adapter,
  equal to it at the start. Log-probs divide the logits by the temperature in both.
- the KL is k3 (~L3100) and is added per token before aggregation, as ours.
- sampling: ``generate`` with ``do_sample``, temperature, top-p 1, top-k 0, repetition penalty 1 and
  ``generation_kwargs`` merged in (~L1155-1173), here ``min_new_tokens``; lampo-pl passes the same
  values, ``min_new_tokens`` as ``SamplingParams.min_new_tokens``.
- the sampler: lampo-pl samples with its own decode loop and the policy LoRA merged while sampling
  (``--engine native``, the default; the same distribution, other random draws: ``lampo_pl/decode.py``);
  ``--engine generate --no-merge`` samples through the same ``generate()`` call on the PEFT model as TRL;
  ``--engine vllm`` through the colocated vLLM engine (``lampo_pl/vllm_engine.py``; TRL's own vLLM path
  cannot run on a CPU, shared docs/VLLM.md). Several engines are several lampo-pl runs, all taking turns
  with TRL in one ring; ``+bf16`` runs lampo-pl's teacher-forced passes (loss, π_old, reference) under bf16 autocast
  (``model.compute.autocast: bfloat16``).
TRL has no LamPO estimator: with ``--estimator lampo`` TRL runs ``grpo`` (not identical semantics).

    .venv/bin/python bench/step_time.py                 # ~1 min on 2 idle cores
    .venv/bin/python bench/step_time.py --model packaged:smollm2-135m-instruct --group-size 8 --prompts 2 \
        --max-new-tokens 256 --micro-batch-size 4 --engine native vllm vllm+bf16 --steps 3 --warmup 1
    .venv/bin/python bench/step_time.py --loss grpo --beta 0 --mu 2 --steps 20
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import statistics
import tempfile
import time
import traceback
import zlib
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from lampo_pl.data.record import Problem
from lampo_pl.data.synthetic import generate_synthetic
from lampo_pl.module import LamPOModule
from lampo_pl.policy import resolve_model_source
from lampo_pl.rewards import RewardBatch
from lampo_pl.rollout import Rollout, SamplingParams
from lampo_pl.settings import ComputeArgs, LoraArgs, MethodArgs, OptimArgs
from lampo_pl.step_metrics import Phases

AGGREGATION = {"grpo": "seq_mean_token_mean", "dapo": "token_mean", "dr_grpo": "seq_mean_token_sum_norm"}
PHASES = ("generation", "rewards", "old_logprobs", "ref_logprobs", "forward", "backward", "optimizer", "logging",
          "other")
GENERATE = "(generate() in generation)"  # a part of "generation", not a phase of its own


def hash_reward(text: str) -> float:
    """A deterministic reward in [0, 1] that differs between responses, so every group has signal."""
    return zlib.crc32(text.encode()) % 1000 / 999


class Baton:
    """Loops in their own processes take turns in a ring, one step each; a finished (or failed) loop drops out."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.turns = {name: mp.get_context("spawn").Semaphore(1 if i == 0 else 0) for i, name in enumerate(names)}
        self.finished = {name: mp.get_context("spawn").Event() for name in names}

    def take(self, name: str) -> None:
        if any(not self.finished[o].is_set() for o in self.names if o != name):
            self.turns[name].acquire()

    def pass_on(self, name: str) -> None:
        i = self.names.index(name)
        for other in self.names[i + 1 :] + self.names[:i]:
            if not self.finished[other].is_set():
                self.turns[other].release()
                return

    def finish(self, name: str) -> None:
        self.finished[name].set()
        self.pass_on(name)


def peak_memory_gib() -> float:
    """The process's peak memory: CUDA memory reserved by torch's allocator (vLLM's KV cache included) on a
    GPU, else the peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_reserved() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class StepClock:
    """Wall time of each step of one loop, from the end of its previous step, excluding baton waits."""

    def __init__(self, name: str, baton: Baton) -> None:
        self.name, self.baton = name, baton
        self.steps: list[float] = []
        self.phases: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)
        self.tokens: list[int] = []
        self.start = 0.0

    def begin(self) -> None:
        self.baton.take(self.name)
        self.start = time.perf_counter()

    def end(self) -> None:
        self.steps.append(time.perf_counter() - self.start)
        self.phases.append(dict(self.current))
        self.current = defaultdict(float)
        self.baton.pass_on(self.name)
        self.begin()

    def record(self) -> dict[str, Any]:
        return {"steps": self.steps, "phases": self.phases, "tokens": self.tokens, "peak_gib": peak_memory_gib()}

    def timed(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[phase] += time.perf_counter() - start

        return wrapper


# ---- lampo-pl ------------------------------------------------------------------------------------


class BenchModule(LamPOModule):
    """LamPOModule with the hash reward, forced response length and per-phase clocks."""

    clock: StepClock

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # host-side problems (frozen dataclasses, which Lightning's default refuses)

    def score(self, rollout: Rollout, problems: list[Problem]) -> RewardBatch:
        total = [hash_reward(t) for t in rollout.texts]
        return RewardBatch(total=total, components={"hash": total}, correct=[0.0] * len(total), diagnostics={})

    def micro_batch_loss(self, *args: Any) -> Any:
        return self.clock.timed("forward", super().micro_batch_loss)(*args)

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        self.clock.timed("backward", super().manual_backward)(loss, *args, **kwargs)

    def log_step(self, rollout: Rollout, scored: RewardBatch, adv: Any, result: Any, phases: Phases,
                 rounds: Any, keep: Any = None) -> None:
        s = phases.seconds
        c = self.clock.current
        c["generation"], c["rewards"] = s["generation"], s["rewards"]
        c[GENERATE] = rollout.generation_seconds  # inside generation: the generate() calls
        c["old_logprobs"], c["ref_logprobs"] = s["old_logprobs"], s["ref_logprobs"]
        c["optimizer"] = s["optimisation"] - c["forward"] - c["backward"]  # grad clip, AdamW step, schedule
        self.clock.tokens.append(int(rollout.response_lengths.sum()))
        self.clock.timed("logging", super().log_step)(rollout, scored, adv, result, phases, rounds, keep=keep)


class LightningClock(L.Callback):
    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.begin()

    def on_train_batch_end(self, *args: Any) -> None:
        self.clock.end()


def build_lampo(args: argparse.Namespace, problems: list[Problem], clock: StepClock) -> Callable[[], None]:
    """lampo-pl with the variant in the clock's name: ``lampo-pl <engine>[+bf16]``."""
    engine, _, bf16 = clock.name.removeprefix("lampo-pl ").partition("+")
    n = args.prompts * args.group_size
    module = BenchModule(
        model=args.model, group_size=args.group_size, prompts_per_step=args.prompts,
        lora=LoraArgs(r=args.lora_r, alpha=2 * args.lora_r, dropout=0.0, dtype=args.dtype,
                      quantization=args.quantization, gradient_checkpointing=args.gradient_checkpointing),
        sampling=SamplingParams(temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                min_new_tokens=args.max_new_tokens, engine=engine, merge_lora=not args.no_merge,
                                vllm_kv_cache_gib=args.kv_cache_gib, vllm_gpu_memory=args.gpu_memory),
        method=MethodArgs(estimator=args.estimator, aggregation=AGGREGATION[args.loss], beta=args.beta,
                          num_iterations=args.mu, eps_low=0.2, eps_high=0.2, kl_estimator="k3",
                          scale="group_std" if args.estimator == "lampo" else "none"),
        optim=OptimArgs(lr=args.lr, betas=(0.9, 0.99), grad_clip=1.0),
        compute=ComputeArgs(micro_batch_size=args.micro_batch_size or n,
                            autocast="bfloat16" if bf16 == "bf16" else "none"),  # +bf16: model.compute.autocast
    )
    module.clock = clock
    # μ optimiser steps per batch, as TRL counts them: the clock ticks once per batch.
    trainer = L.Trainer(max_steps=(args.warmup + args.steps) * args.mu, accelerator=args.device, devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[LightningClock(clock)])
    loader = DataLoader(problems, batch_size=args.prompts, collate_fn=list)  # type: ignore[arg-type]
    return lambda: trainer.fit(module, train_dataloaders=loader)


# ---- TRL ------------------------------------------------------------------------------------------


def build_trl(args: argparse.Namespace, problems: list[Problem], clock: StepClock) -> Callable[[], None]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class TrlClock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            clock.begin()

        def on_pre_optimizer_step(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()  # after the grad clipping

        def on_optimizer_step(self, *a: Any, **k: Any) -> None:
            clock.current["optimizer"] += time.perf_counter() - self.start

        def on_step_end(self, args_: Any, state: Any, control: Any, **k: Any) -> None:
            if state.global_step % args.mu == 0:  # TRL counts μ optimiser steps per batch: tick once per batch
                clock.end()

    def reward(completions: list[str], completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
        clock.tokens.append(sum(len(ids) for ids in completion_ids))
        return [hash_reward(t) for t in completions]

    source = resolve_model_source(args.model)
    n = args.prompts * args.group_size
    mbs = args.micro_batch_size or n
    scratch = tempfile.mkdtemp(prefix="step-time-trl-")  # output_dir; nothing is saved (save_strategy "no")
    config = GRPOConfig(
        output_dir=scratch, report_to="none", save_strategy="no", use_cpu=args.device == "cpu",
        bf16=args.dtype == "bfloat16", gradient_checkpointing=args.gradient_checkpointing, seed=0, disable_tqdm=True,
        shuffle_dataset=False,
        max_steps=(args.warmup + args.steps) * args.mu, logging_steps=10, dataloader_num_workers=0,
        per_device_train_batch_size=mbs, gradient_accumulation_steps=n // mbs, num_generations=args.group_size,
        max_completion_length=args.max_new_tokens, generation_kwargs={"min_new_tokens": args.max_new_tokens},
        temperature=args.temperature, top_p=1.0, top_k=0, repetition_penalty=1.0,
        beta=args.beta, num_iterations=args.mu, loss_type=args.loss, epsilon=0.2,
        scale_rewards="none" if args.estimator == "dr_grpo" else "group",
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.99, max_grad_norm=1.0, optim="adamw_torch",
    )
    quantization = None
    if args.quantization == "4bit":  # the same NF4 + double quantisation as lampo_pl.policy (QLoRA)
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=getattr(torch, args.dtype))  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, args.dtype),
                                                 quantization_config=quantization)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"
    renderer = BenchModule(model=args.model)
    renderer.tokenizer = tokenizer
    prompts = renderer.render(problems)  # the exact strings lampo-pl samples from (same chat template)
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    # Each prompt once per step: the repeat sampler gives it G times (num_generations).
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, processing_class=tokenizer,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), peft_config=lora,
                          callbacks=[TrlClock()])
    trainer.remove_callback(PrinterCallback)  # its per-log dict prints would bury the table
    trainer._generate = clock.timed("generation", trainer._generate)
    trainer._calculate_rewards = clock.timed("rewards", trainer._calculate_rewards)
    logps, score = trainer._get_per_token_logps_and_entropies, trainer._generate_and_score_completions
    no_grad_passes = [0]

    def scored(*a: Any, **k: Any) -> Any:
        no_grad_passes[0] = 0
        return score(*a, **k)

    def per_token_logps(*a: Any, **k: Any) -> Any:
        # With grad: the loss forward. Without: the old pass comes first when μ > 1 (~L2646), then the reference.
        phase = "forward"
        if not torch.is_grad_enabled():
            phase = "old_logprobs" if args.mu > 1 and no_grad_passes[0] == 0 else "ref_logprobs"
            no_grad_passes[0] += 1
        return clock.timed(phase, logps)(*a, **k)

    trainer._generate_and_score_completions = scored
    trainer.model.generate = clock.timed(GENERATE, trainer.model.generate)  # the PeftModel that TRL unwraps
    trainer._get_per_token_logps_and_entropies = per_token_logps
    trainer.accelerator.backward = clock.timed("backward", trainer.accelerator.backward)

    def train() -> None:
        try:
            trainer.train()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return train


# ---- run ------------------------------------------------------------------------------------------


def run_one(name: str, args: argparse.Namespace, baton: Baton, results: Any) -> None:
    """One framework's whole run, in its own process; its step clock goes back through ``results``."""
    torch.set_num_threads(args.threads)
    L.seed_everything(0, verbose=False)
    clock = StepClock(name, baton)
    problems = generate_synthetic((args.warmup + args.steps) * args.prompts, levels=(1, 2))
    try:
        run = (build_trl if name == "TRL" else build_lampo)(args, problems, clock)
        run()
        results.put((name, clock.record()))
    except BaseException:
        results.put((name, traceback.format_exc()))
    finally:
        baton.finish(name)


def run_alternating(args: argparse.Namespace, names: list[str]) -> dict[str, dict[str, Any]]:
    ctx = mp.get_context("spawn")  # a fresh interpreter each: no torch state or OpenMP team shared
    baton, results = Baton(names), ctx.Queue()
    procs = [ctx.Process(target=run_one, args=(n, args, baton, results)) for n in names]
    for proc in procs:
        proc.start()
    records = dict(results.get() for _ in procs)
    for proc in procs:
        proc.join()
    errors = [f"{name}:\n{rec}" for name, rec in records.items() if isinstance(rec, str)]
    if errors:
        raise RuntimeError("\n".join(errors))
    return records


def summarise(record: dict[str, Any], warmup: int) -> dict[str, float]:
    steps, phases = record["steps"][warmup:], record["phases"][warmup:]
    for step, ph in zip(steps, phases, strict=True):
        ph["other"] = step - sum(v for k, v in ph.items() if k != GENERATE)  # the loop, hooks, advantages
    out = {p: statistics.median(ph.get(p, 0.0) for ph in phases) for p in (*PHASES, GENERATE)}
    out["step"] = statistics.median(steps)
    out["tokens"] = statistics.median(record["tokens"][warmup:])
    out["peak_gib"] = record["peak_gib"]
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny:qwen3", help="tiny:<arch>, a local folder or a hub id")
    parser.add_argument("--group-size", type=int, default=8, help="G responses per prompt")
    parser.add_argument("--prompts", type=int, default=4, help="B prompts per step")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="every response has exactly this length")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 2r), all-linear")
    parser.add_argument("--beta", type=float, default=0.04, help="KL coefficient (k3)")
    parser.add_argument("--mu", type=int, default=1, help="optimisation passes per rollout batch")
    parser.add_argument("--loss", choices=sorted(AGGREGATION), default="dapo", help="TRL loss_type")
    parser.add_argument("--estimator", choices=["grpo", "dr_grpo", "lampo"], default="grpo")
    parser.add_argument("--micro-batch-size", type=int, default=None, help="rows per forward/backward (B·G)")
    parser.add_argument("--temperature", type=float, default=1.0)
    variants = [f"{e}{b}" for e in ("native", "generate", "vllm") for b in ("", "+bf16")]
    parser.add_argument("--engine", nargs="+", choices=variants, default=["native"],
                        help="lampo-pl's sampler(s), each its own run; +bf16: model.compute.autocast bfloat16")
    parser.add_argument("--kv-cache-gib", type=int, default=2, help="vLLM's KV cache (CPU), GiB")
    parser.add_argument("--no-merge", action="store_true", help="lampo-pl samples through the unmerged LoRA")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=12, help="measured steps per framework")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured first steps per framework")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-trl", action="store_true", help="lampo-pl only")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="weights / compute")
    parser.add_argument("--quantization", choices=["none", "4bit"], default="none", help="4bit: QLoRA's NF4 base")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--gpu-memory", type=float, default=0.3, help="vLLM's share of the GPU (CUDA)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    names = [f"lampo-pl {variant}" for variant in args.engine] + ([] if args.no_trl else ["TRL"])
    records = run_alternating(args, names)
    print_table(args, {name: summarise(records[name], args.warmup) for name in names})


def print_table(args: argparse.Namespace, results: dict[str, dict[str, float]]) -> None:
    names = list(results)
    print(f"{args.model}, G={args.group_size}, B={args.prompts}, {args.max_new_tokens} new tokens, "
          f"LoRA r={args.lora_r}, "
          f"β={args.beta}, μ={args.mu}, loss={args.loss} ({AGGREGATION[args.loss]}), estimator={args.estimator}, "
          f"micro-batch={args.micro_batch_size or args.prompts * args.group_size}, {args.threads} threads, "
          f"{'' if args.no_merge else 'native: LoRA merged; '}"
          f"medians of {args.steps} steps after {args.warmup} warm-up")
    print("| phase (s) | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for phase in (PHASES[0], GENERATE, *PHASES[1:], "step"):
        print(f"| {phase} | " + " | ".join(f"{results[n][phase]:.3f}" for n in names) + " |")
    print("| tokens / step | " + " | ".join(f"{results[n]['tokens']:.0f}" for n in names) + " |")
    print("| tokens / s | " + " | ".join(f"{results[n]['tokens'] / results[n]['step']:.0f}" for n in names) + " |")
    print("| generated tokens / s | " + " | ".join(f"{results[n]['tokens'] / results[n][GENERATE]:.0f}" for n in names)
          + " |")
    print("| peak memory (GiB) | " + " | ".join(f"{results[n]['peak_gib']:.1f}" for n in names) + " |")
    for name in names[:-1] if "TRL" in results else []:
        print(f"step-time ratio {name} / TRL: {results[name]['step'] / results['TRL']['step']:.2f}")


if __name__ == "__main__":
    main()
