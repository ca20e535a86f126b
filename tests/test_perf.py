"""No wasted work (issue 7): sampler log-probs stand in for π_old, LamPO at μ = 1 takes no extra pass,
micro-batches minimise padding."""

from __future__ import annotations

import pytest
import torch
from test_module import fit, make  # tests/ is on sys.path under pytest (no package): the shared tiny-run helpers
from test_rollout import _boost_eos, _prompts

import lampo_pl.module as module_mod
from lampo_pl.logprobs import token_logprobs
from lampo_pl.module import LamPOModule
from lampo_pl.policy import load_policy
from lampo_pl.rollout import Rollout, SamplingParams, generate_rollout
from lampo_pl.trajectory import Trajectory, micro_batches


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, 0), (0.7, 20)])
def test_sampled_logprobs_match_teacher_forcing_and_change_no_token(temperature: float, top_k: int) -> None:
    """The recorder sees the logits before the temperature / top-k warpers: π_old at temperature T itself."""
    model, tokenizer = load_policy("tiny:qwen3", lora_r=4)
    _boost_eos(model, tokenizer.eos_token_id, bias=3.0)  # varied lengths: padding after EOS is exercised
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B.policy" in name:
                param.normal_(0, 0.2)
    sampling = SamplingParams(temperature=temperature, top_k=top_k, max_new_tokens=10)
    rollouts = {}
    for record in (False, True):
        torch.manual_seed(0)
        rollouts[record] = generate_rollout(model, tokenizer, _prompts(tokenizer), 3, sampling,
                                            generation_batch_size=4, record_logprobs=record)
    rollout = rollouts[True]
    assert rollouts[False].sampled_logprobs is None
    assert torch.equal(rollouts[False].input_ids, rollout.input_ids), "recording must not change the samples"
    assert rollout.sampled_logprobs is not None and rollout.sampled_logprobs.shape == rollout.response_mask.shape
    assert bool((rollout.response_mask == 0).any()), "some responses should end before max_new_tokens"
    assert bool((rollout.sampled_logprobs[rollout.response_mask == 0] == 0).all())
    model.eval()
    with torch.no_grad():
        logp, _ = token_logprobs(model, rollout.input_ids, rollout.attention_mask, rollout.prompt_len,
                                 temperature=temperature)
    kept = rollout.response_mask.bool()
    torch.testing.assert_close(rollout.sampled_logprobs[kept], logp[kept], rtol=1e-4, atol=1e-4)


def test_lampo_at_mu1_takes_no_old_logprob_pass_and_scores_use_pi_old(monkeypatch: pytest.MonkeyPatch) -> None:
    """μ = 1: LamPO's confidence scores come from the sampler's log-probs, and they equal a teacher-forced
    π_old pass over the same rollout. (μ > 1 still takes the pass: test_module's μ = 2 test.)"""
    passes: list[int] = []
    scored: list[torch.Tensor] = []
    no_grad, scores = LamPOModule.logprobs_no_grad, module_mod.confidence_scores

    def counting(self, rollout):  # type: ignore[no-untyped-def]
        passes.append(1)
        return no_grad(self, rollout)

    def spy(logp, mask, mode):  # type: ignore[no-untyped-def]
        scored.append(logp)
        return scores(logp, mask, mode)

    monkeypatch.setattr(LamPOModule, "logprobs_no_grad", counting)
    monkeypatch.setattr(module_mod, "confidence_scores", spy)
    module = make("lampo", beta=0.0, lr=0.0)  # lr 0: the policy after the step is still π_old
    fit(module, steps=1)
    assert passes == []
    rollout: Rollout = module.seen_rollout  # type: ignore[attr-defined]
    mask = rollout.response_mask.bool()
    no_grad_logp = module.logprobs_no_grad(Trajectory.of(rollout))
    torch.testing.assert_close(scored[0][mask], no_grad_logp[mask], rtol=1e-4, atol=1e-4)


def _fake_rollout(prompt_lens: list[int], response_lens: list[int], width: int = 12) -> Rollout:
    n, p = len(prompt_lens), max(prompt_lens)
    columns = torch.arange(p + width)  # [P+L]
    prompt_part = columns[None, :p] >= p - torch.tensor(prompt_lens)[:, None]  # [N, P] left-padded
    response_part = columns[None, : width] < torch.tensor(response_lens)[:, None]  # [N, L]
    attention = torch.cat([prompt_part, response_part], dim=1).long()  # [N, P+L]
    return Rollout(
        input_ids=torch.ones(n, p + width, dtype=torch.long), attention_mask=attention,
        response_mask=response_part.long(), prompt_len=p, response_lengths=torch.tensor(response_lens),
        truncated=torch.zeros(n, dtype=torch.bool), texts=[""] * n, generation_seconds=0.0,
    )  # fmt: skip


def _padded_tokens(rollout: Rollout, batches: list[list[int]]) -> int:
    """Tokens the forward passes process: rows × trimmed width, summed over micro-batches."""
    return sum(Trajectory.of(rollout).rows(torch.tensor(rows)).input_ids.numel() for rows in batches)


@pytest.mark.parametrize("seed", range(5))
def test_micro_batches_minimise_padding(seed: int) -> None:
    """With one prompt length (responses are what varies), sorted micro-batches process the fewest tokens of
    every split of 6 rows into micro-batches of 2 (checked against all 15 splits)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 13, (6,), generator=gen).tolist()
    rollout = _fake_rollout([5] * 6, lengths)
    ours = _padded_tokens(rollout, [rows.tolist() for rows in micro_batches(Trajectory.of(rollout), 2)])

    def splits(rows: list[int]) -> list[list[list[int]]]:
        if not rows:
            return [[]]
        first, rest = rows[0], rows[1:]
        return [[[first, mate], *tail] for mate in rest for tail in splits([r for r in rest if r != mate])]

    best = min(_padded_tokens(rollout, split) for split in splits(list(range(6))))
    assert ours == best
    assert ours <= _padded_tokens(rollout, [[0, 1], [2, 3], [4, 5]])  # the unsorted split
