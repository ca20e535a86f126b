"""lampo-pl's own decode loop: one prefill, then one token per step with the model's KV cache.

How this differs from ``model.generate`` (the ``engine="generate"`` path, kept as the oracle) and why:
1. A token is drawn by inverse CDF, one uniform per row (`sample_categorical`). ``generate``'s
   ``torch.multinomial`` draws V exponentials per row; on the CPU that was 0.75 ms of a ~7 ms decode
   step for 32 rows × 1,024 tokens, i.e. ~10 % of sampling (docs/performance.md). The distribution
   is the same, softmax(z / T) after top-k / top-p; the random stream, and so the tokens for a given
   seed, are not ``generate``'s.
2. The model's ``generation_config`` is never read: sampling is exactly the `SamplingParams`, so a
   checkpoint's default repetition penalty or top-k cannot change π_old behind the loss's back.
3. π's log-prob of every sampled token comes for free: the log-softmax over z / T that sampling
   needs anyway, taken before top-k / top-p and before the ``min_new_tokens`` EOS ban, i.e. exactly
   what a teacher-forced pass over the response computes (LamPO's π_old at μ = 1).
4. Everything else is ``generate``'s arithmetic, so greedy tokens are bit-identical to it
   (tests/test_decode.py): position ids from the attention mask's cumulative sum, the mask dropped
   when no row is padded, the last position's logits only (``logits_to_keep=1``), rows that ended
   filled with the pad id, and a stop as soon as every row has ended.
5. The KV cache is passed under the name the model's ``forward`` declares: ``cache`` from transformers
   5.2x on, ``past_key_values`` before (deprecated, removed in 5.40; issue 14). Read from the signature,
   not guessed from a version string, so the loop runs on the 5.19 that vLLM's CPU build pins too.
6. On request (``record_hidden``) the output head's input at the position that predicts each sampled
   token (the final norm's output) is kept, as log π is: DelTA's h (``delta_step.py``) at μ = 1 then
   costs no teacher-forced pass. The head sees one position per call (``logits_to_keep=1``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import torch
from peft import PeftModel
from torch import Tensor, nn
from transformers import TopKLogitsWarper, TopPLogitsWarper

DECODE_ARGUMENTS = ("attention_mask", "position_ids", "past_key_values", "use_cache", "logits_to_keep")
CACHE_ARGUMENTS = ("cache", "past_key_values")  # the new name first (transformers' deprecate_kwarg, 5.40)


class Decoded(NamedTuple):
    """What ``decode`` sampled: tokens ``[n, l]``, their log-probs ``[n, l]``, the head inputs ``[n, l, H]`` or None."""

    tokens: Tensor
    logprobs: Tensor
    hidden: Tensor | None


@contextmanager
def head_inputs(model: nn.Module, last: bool = False) -> Iterator[list[Tensor]]:
    """Every input the model's output head receives in the body, detached, in call order; ``last``: only each
    call's last position ``[n, H]``, copied (a view of the prefill's ``[n, 1, H]`` slice keeps its ``[n, p, H]``).

    A forward pre-hook on ``get_output_embeddings()``, as DelTA's reference captures h (``RUCBM/DelTA``,
    ``verl-DelTA/verl/workers/actor/dp_actor.py``, ``_forward_micro_batch_with_h``).
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    captured: list[Tensor] = []
    handle = base.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: captured.append(args[0][:, -1].clone() if last else args[0].detach())
    )
    try:
        yield captured
    finally:
        handle.remove()


def sample_categorical(probs: Tensor) -> Tensor:
    """One draw per row from non-negative, unnormalised probabilities, by inverse CDF. [n, V] -> [n]

    The CDF is summed in float64 (float32 on Apple's MPS, which has no float64): at a 152k vocabulary
    float32 cumsum rounding (~1e-7 of the total per add) would move probability mass between
    neighbouring tokens.

    Raises:
        ValueError: a row sums to zero or is not finite (NaN / inf logits).
    """
    wide = torch.float32 if probs.device.type == "mps" else torch.float64  # Apple's MPS has no float64
    cdf = probs.to(wide).cumsum(dim=-1)  # [n, V]
    total = cdf[:, -1:]  # [n, 1]
    valid = (total > 0) & torch.isfinite(total)  # [n, 1]
    if not bool(valid.all()):
        rows = (~valid).squeeze(1).nonzero().flatten().tolist()
        raise ValueError(f"cannot sample: the probabilities of rows {rows} are zero, NaN or infinite")
    u = torch.rand(total.shape, dtype=wide, device=probs.device) * total  # [n, 1] uniform in [0, total)
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)  # [n]


def next_tokens(
    logits: Tensor,
    temperature: float,
    top_k: int,
    top_p: float,
    banned: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Pick one token per row; -> (tokens [n], their log softmax(z / T) [n]). `logits` [n, V] float32.

    Greedy (T = 0) takes the argmax and reports log-probs at T = 1. `banned` ids (EOS before
    ``min_new_tokens``) can never be picked; the log-probs are π's own, before bans and warpers.
    """
    scaled = logits / temperature if temperature > 0 else logits  # [n, V]
    logp = torch.log_softmax(scaled, dim=-1)  # [n, V]
    scores = scaled if banned is None else scaled.index_fill(1, banned, float("-inf"))  # [n, V]
    if temperature == 0:
        tokens = scores.argmax(dim=-1)  # [n]
    else:
        # transformers' own warpers, in generate's order (top-k, then top-p); they ignore input_ids.
        if top_k > 0:
            scores = TopKLogitsWarper(top_k)(None, scores)  # type: ignore[arg-type]
        if top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)  # type: ignore[arg-type]
        probs = logp.exp() if scores is scaled else torch.softmax(scores, dim=-1)  # [n, V]
        tokens = sample_categorical(probs)  # [n]
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)  # [n], [n]


def cache_argument(model: nn.Module) -> str:
    """The name under which `model`'s forward takes (and its output returns) the KV cache.

    Raises:
        ValueError: the forward names neither and takes no ``**kwargs`` (e.g. remote code), or lacks
            another argument the loop passes.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    params = inspect.signature(base.forward).parameters  # follows deprecate_kwarg's __wrapped__
    name = next((n for n in CACHE_ARGUMENTS if n in params), None)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return name or CACHE_ARGUMENTS[1]  # transformers' models name every argument and take **kwargs besides
    if missing := [n for n in DECODE_ARGUMENTS if n not in params and not (n in CACHE_ARGUMENTS and name)]:
        raise ValueError(f"{type(base).__name__}.forward takes no {', '.join(missing)}, which the native decode "
                         "loop passes; sample with model.sampling.engine: generate")
    return name  # type: ignore[return-value]  # not None: it is not missing


@torch.no_grad()
def decode(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    max_new_tokens: int,
    min_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_ids: list[int],
    pad_id: int,
    record_hidden: bool = False,
) -> Decoded:
    """Sample responses after left-padded prompts [n, p] -> tokens [n, l], their log-probs [n, l], l <= max,
    and with ``record_hidden`` the head's input [n, l, H] at the position that predicts each token.

    After a row's first EOS its tokens are `pad_id`, its log-probs and head inputs 0; the loop stops when every
    row has ended or at `max_new_tokens`. The model is called as it is (train / eval mode is the caller's).
    """
    with head_inputs(model, last=True) if record_hidden else nullcontext([]) as heads:
        cache = cache_argument(model)
        n = input_ids.shape[0]
        positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)  # [n, p]
        mask: Tensor | None = None if bool(attention_mask.all()) else attention_mask  # as generate: no padding, no mask
        eos = torch.tensor(eos_ids, device=input_ids.device)  # [e]
        ended = torch.zeros(n, dtype=torch.bool, device=input_ids.device)  # [n]
        tokens, logps, before = [], [], []
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        step_positions = positions[:, -1:]  # [n, 1]
        for t in range(max_new_tokens):
            banned = eos if t < min_new_tokens else None
            token, logp = next_tokens(out.logits[:, -1].float(), temperature, top_k, top_p, banned)  # [n], [n]
            tokens.append(token.masked_fill(ended, pad_id))
            logps.append(logp.masked_fill(ended, 0.0))
            before.append(ended.clone())
            ended |= torch.isin(token, eos)
            if t + 1 == max_new_tokens or bool(ended.all()):
                break
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)  # [n, p+t+1]
            step_positions = step_positions + 1
            out = model(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=step_positions,
                        use_cache=True, logits_to_keep=1, **{cache: out[cache]})  # fmt: skip
    sampled, logprobs = torch.stack(tokens, dim=1), torch.stack(logps, dim=1)  # [n, l], [n, l]
    if not record_hidden:
        return Decoded(sampled, logprobs, None)
    if len(heads) != sampled.shape[1]:
        raise RuntimeError(f"the output head ran {len(heads)} times for {sampled.shape[1]} decode steps")
    hidden = torch.stack(heads, dim=1)  # [n, l, H]
    return Decoded(sampled, logprobs, hidden.masked_fill_(torch.stack(before, dim=1)[:, :, None], 0))  # 0 once ended
