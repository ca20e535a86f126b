"""What DelTA (model.method.delta) adds to a training step, measured piece by piece in one process.

DelTA adds (a) at μ = 1 with the native engine, the head inputs the decode loop keeps while sampling
(``record_hidden``: a copy of ``[n, H]`` per decode step, then ``[N, L, H]``); (b) at μ > 1, the forward
pre-hook on the output head during the π_old pass and the placement of its inputs as ``[N, L, H]``;
(c) ``delta_advantages``. At μ = 1 with the ``generate`` / ``vllm`` engines (and before issue 22's last
point, with every engine) it also costs the no-grad π_old pass the μ = 1 identity otherwise skips. Each is
timed here against the loss pass (forward + backward of the same batch) and the rollout, alternating,
medians of ``--repeats``. Setting as bench/step_time.py: ``tiny:qwen3`` (2 layers, hidden 64, 1,024-token
vocabulary), G = 8, B = 4, 32 new tokens, LoRA r = 8, one micro-batch of 32, one thread.

    PYTHONPATH=. .venv/bin/python bench/delta_step_time.py     # ~1 min
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lampo_pl.data.datamodule import ProblemDataModule
from lampo_pl.decode import head_inputs
from lampo_pl.delta import delta_advantages
from lampo_pl.delta_step import place_hidden
from lampo_pl.module import LamPOModule
from lampo_pl.rollout import SamplingParams, generate_rollout
from lampo_pl.settings import ComputeArgs, LoraArgs, MethodArgs
from lampo_pl.trajectory import Trajectory


def seconds(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = LamPOModule(
        model="tiny:qwen3", group_size=8, prompts_per_step=4, lora=LoraArgs(r=8, alpha=16),
        sampling=SamplingParams(temperature=1.0, max_new_tokens=32, min_new_tokens=32),
        method=MethodArgs(estimator="grpo", beta=0.0, delta=True), compute=ComputeArgs(micro_batch_size=32),
    )  # fmt: skip
    module.configure_model()
    data = ProblemDataModule(train_set="synthetic", eval_sets=[], prompts_per_step=4, synthetic_size=64)
    data.setup("fit")
    problems = next(iter(data.train_dataloader()))
    rollout, _ = module.collect_rollout(problems, module.render(problems))
    traj = Trajectory.of(rollout)
    advantages = torch.randn(traj.num_rows)  # [N]

    def loss_pass() -> None:
        logp, _ = module.policy_logprobs(traj, with_entropy=True)
        (logp * traj.loss_mask).sum().backward()

    def old_pass() -> None:
        module.logprobs_no_grad(traj)

    hidden: list[torch.Tensor] = []

    def hooked_old_pass() -> None:
        assert module.policy_model is not None
        with head_inputs(module.policy_model) as chunks:
            module.logprobs_no_grad(traj)
        hidden[:] = [place_hidden(chunks, traj, 32)]

    old_logp = module.logprobs_no_grad(traj)

    def statistics_only() -> None:
        delta_advantages(advantages, hidden[0], old_logp, traj.loss_mask)

    def rollout_pass(record_hidden: bool) -> Callable[[], object]:
        prompts = module.render(problems)
        return lambda: generate_rollout(module.policy_model, module.tokenizer, prompts, 8, module.sampling,  # type: ignore[arg-type]
                                        record_logprobs=True, record_hidden=record_hidden)  # fmt: skip

    pieces = {"loss pass (fwd + bwd)": loss_pass, "π_old pass": old_pass, "π_old pass + hook + placement":
              hooked_old_pass, "delta_advantages": statistics_only, "rollout (native)": rollout_pass(False),
              "rollout (native, record_hidden)": rollout_pass(True)}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in pieces}
    for _ in range(args.repeats):
        for name, function in pieces.items():
            times[name].append(seconds(function))
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"N = {traj.num_rows}, L = {traj.loss_mask.shape[1]}, H = {hidden[0].shape[-1]}; torch {torch.__version__}")
    for name, value in med.items():
        print(f"{name:32s} {value * 1e3:8.2f} ms")
    arithmetic = med["π_old pass + hook + placement"] - med["π_old pass"] + med["delta_advantages"]
    recorded = med["rollout (native, record_hidden)"] - med["rollout (native)"] + med["delta_advantages"]
    print(f"DelTA at μ > 1 (hook, placement, statistics): {arithmetic * 1e3:.2f} ms")
    print(f"DelTA at μ = 1, native (recording while sampling, statistics): {recorded * 1e3:.2f} ms")
    print(f"DelTA at μ = 1, generate / vllm (+ the π_old pass): {(arithmetic + med['π_old pass']) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
