"""Chunked token log-probs equal the plain log_softmax/gather, in values and gradients, at a fraction of the memory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from lampo_pl.logprobs import (
    logprobs_from_hidden,
    position_ids_from_mask,
    token_logprobs,
)
from lampo_pl.policy import load_policy
from lampo_pl.tiny import tiny_model

P = 5  # response_start


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LAMPO_CACHE", str(tmp_path_factory.getbasetemp() / "lampo_cache"))
    yield


@pytest.fixture(scope="module")
def model64() -> PreTrainedModel:
    return tiny_model("qwen3").double()


def _inputs(seed: int = 0, rows: int = 3, width: int = 12) -> tuple[Tensor, Tensor]:
    """Random ids; row 0 and 1 left-padded, row 2 right-padded (a response that ended early)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 1000, (rows, width), generator=gen)  # [N, T]
    mask = torch.ones(rows, width, dtype=torch.long)  # [N, T]
    mask[0, :2] = 0
    mask[1, :1] = 0
    mask[2, -3:] = 0
    return ids, mask


def _plain(model: nn.Module, ids: Tensor, mask: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """The reference: full [N, L, V] log_softmax, then gather."""
    logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
    logsm = torch.log_softmax(logits[:, P - 1 : -1] / temperature, dim=-1)  # [N, L, V]
    logp = logsm.gather(-1, ids[:, P:, None]).squeeze(-1)  # [N, L]
    return logp, -(logsm.exp() * logsm).sum(-1)  # [N, L], [N, L]


def _grads(model: nn.Module) -> dict[str, Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 21, 4096])  # N·L = 21: 5 and 7 divide it unevenly or not
@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_equals_plain_values_and_grads(model64: PreTrainedModel, chunk_size: int, seed: int) -> None:
    ids, mask = _inputs(seed)
    weights = torch.randn(3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    model64.zero_grad()
    logp, entropy = token_logprobs(model64, ids, mask, P, chunk_size=chunk_size, with_entropy=True)
    assert logp.shape == entropy.shape == (3, 7) and logp.dtype == torch.float64
    assert not entropy.requires_grad  # a metric, kept out of the graph
    (logp * weights).sum().backward()
    ours = _grads(model64)
    plain_logp, plain_entropy = _plain(model64, ids, mask)
    (plain_logp * weights).sum().backward()
    plain = _grads(model64)
    torch.testing.assert_close(logp, plain_logp, rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy, plain_entropy, rtol=0, atol=1e-12)
    assert ours.keys() == plain.keys() and len(ours) > 0
    for name in plain:
        torch.testing.assert_close(ours[name], plain[name], rtol=1e-9, atol=1e-12)


def test_temperature_divides_the_logits(model64: PreTrainedModel) -> None:
    ids, mask = _inputs()
    with torch.no_grad():
        logp, _ = token_logprobs(model64, ids, mask, P, chunk_size=4, temperature=0.7)
        plain, _ = _plain(model64, ids, mask, temperature=0.7)
    torch.testing.assert_close(logp, plain, rtol=0, atol=1e-12)


def test_left_padding_does_not_change_log_probs(model64: PreTrainedModel) -> None:
    """Position ids follow the mask, as in generate: 3 pad tokens in front change nothing."""
    ids = _inputs()[0][:1]  # [1, T]
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)  # [1, T+3]
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)  # [1, T+3]
    with torch.no_grad():
        unpadded, _ = token_logprobs(model64, ids, torch.ones_like(ids), P)
        shifted, _ = token_logprobs(model64, padded, mask, P + 3)
    torch.testing.assert_close(shifted, unpadded, rtol=0, atol=1e-10)


def test_peft_adapter_is_used() -> None:
    model, _ = load_policy("tiny:qwen3", lora_r=4)
    with torch.no_grad():  # a non-zero LoRA B, so the adapter changes the outputs
        for name, param in model.named_parameters():
            if "lora_B.policy" in name:
                param.normal_(0, 0.2)
    ids, mask = _inputs(rows=5)
    mask[3:] = 1
    logp, _ = token_logprobs(model, ids, mask, P, chunk_size=8)
    plain, _ = _plain(model, ids, mask)
    torch.testing.assert_close(logp, plain, rtol=1e-5, atol=1e-5)
    with model.disable_adapter(), torch.no_grad():
        base, _ = token_logprobs(model, ids, mask, P)
    assert not torch.allclose(base, logp)


def test_linear_head_with_bias_and_empty_input() -> None:
    head = nn.Linear(16, 50, bias=True).double()
    hidden = torch.randn(9, 16, dtype=torch.float64, requires_grad=True)  # [M, H]
    targets = torch.randint(0, 50, (9,))  # [M]
    logp, _ = logprobs_from_hidden(hidden, targets, head, chunk_size=4)
    plain = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None]).squeeze(-1)  # [M]
    torch.testing.assert_close(logp, plain, rtol=0, atol=1e-12)
    (hidden_grad,) = torch.autograd.grad(logp.sum(), hidden)
    (plain_grad,) = torch.autograd.grad(plain.sum(), hidden)
    torch.testing.assert_close(hidden_grad, plain_grad, rtol=0, atol=1e-12)
    empty, _ = logprobs_from_hidden(hidden[:0], targets[:0], head)
    assert empty.shape == (0,)
    with pytest.raises(ValueError, match="chunk_size"):
        logprobs_from_hidden(hidden, targets, head, chunk_size=0)


def _largest_saved_for_backward(fn: object) -> int:
    """Numel of the largest tensor autograd keeps for backward while running fn()."""
    sizes: list[int] = []

    def pack(tensor: Tensor) -> Tensor:
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()  # type: ignore[operator]
    return max(sizes)


def test_backward_keeps_no_logits_bigger_than_a_chunk() -> None:
    """Memory grows with the chunk, not with N·L·V: nothing [N, L, V]-sized is saved for backward."""
    vocab, rows = 4000, 256
    head = nn.Linear(32, vocab, bias=False)
    hidden = torch.randn(rows, 32, requires_grad=True)  # [M, H]
    targets = torch.randint(0, vocab, (rows,))  # [M]
    chunk = 16
    ours = _largest_saved_for_backward(lambda: logprobs_from_hidden(hidden, targets, head, chunk_size=chunk))
    plain = _largest_saved_for_backward(lambda: torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None]))
    assert plain >= rows * vocab  # sanity: the hook does see the plain path's [M, V] logits
    assert ours <= max(vocab * 32, rows * 32)  # only the head's weight and the hidden states
