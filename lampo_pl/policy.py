"""The policy: one base causal LM (optionally 4-bit) with a trainable `policy` and a frozen `reference` LoRA.

How this differs from the usual GRPO setup (TRL's GRPOTrainer keeps a full second model as the
reference) and why:
1. The reference policy is a second LoRA adapter on the same base weights, so no second copy of the
   model is held (docs/ALGORITHMS.md "Models"). It starts equal to the policy adapter (a copy of
   its weights, or both loaded from `init_adapter`), i.e. equal to the base model for a fresh LoRA.
2. peft's `set_adapter` makes the activated adapter trainable and freezes the others, so the
   reference pass goes through `reference_adapter()`, which runs under `torch.no_grad()` and puts
   the policy adapter and every `requires_grad` flag back afterwards.
3. QLoRA (Dettmers et al. 2023, arXiv 2305.14314): NF4 with double quantisation and bf16 compute
   on CUDA; float32 compute on CPU, where bitsandbytes has no fast bf16 path.
4. bitsandbytes on CPU repacks 4-bit weights into a format with no backward after any forward run
   without grad and outside train mode (`generate` is one): every LoRA grad silently becomes None.
   `support_avx512bf16_for_cpu = False` on every `Linear4bit` turns that repacking off
   (bitsandbytes 0.50 `nn/modules.py`, `Linear4bit.forward`; docs/ENVIRONMENT.md "Pitfalls").

Model names: `tiny:qwen3|phi3|llama` (lampo_pl.tiny, cached), `tiny:<arch>-sft` (the same after a brief
supervised warm-up on synthetic sums, lampo_pl.tiny_sft: partial competence, for cheap ablations;
`tiny:<arch>-sft<N>` stops the warm-up after N steps instead of 150, e.g. `-sft100` for a weaker start),
`packaged:smollm2-135m-instruct`
(lampo_pl.packaged), anything else a Hub id or a local folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, get_args

import torch
from peft import (
    LoraConfig,
    PeftModel,
    TaskType,
    get_peft_model,
    get_peft_model_state_dict,
    prepare_model_for_kbit_training,
)
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lampo_pl.errors import UserError
from lampo_pl.lora_merge import branches_off, is_plain_lora, lora_layers
from lampo_pl.packaged import build_cached, cache_root, gguf_model_dir, packaged_model_dir
from lampo_pl.startup_checks import check_hub_reachable
from lampo_pl.tiny import TINY_VERSION, TinyArch, save_tiny
from lampo_pl.tiny_sft import SFT_ARGS, SFT_VERSION, save_tiny_sft

Quantization = Literal["none", "4bit", "8bit"]
POLICY_ADAPTER = "policy"
REFERENCE_ADAPTER = "reference"
_GC_KWARGS = {"use_reentrant": False}  # reentrant checkpointing drops grads of frozen-input LoRA blocks


_TINY = re.compile(r"(?P<arch>.+?)(?P<sft>-sft(?P<steps>[1-9][0-9]*)?)?")  # qwen3, qwen3-sft, qwen3-sft100


def resolve_model_source(name: str) -> str:
    """Map a model name to something `from_pretrained` accepts (building cached folders on demand)."""
    kind, _, rest = name.partition(":")
    if kind == "tiny":
        match = _TINY.fullmatch(rest)
        if match is None or match["arch"] not in get_args(TinyArch):
            raise ValueError(f"unknown tiny model {name!r}; expected tiny:<arch>, tiny:<arch>-sft or "
                             "tiny:<arch>-sft<steps> with <arch> one of qwen3, phi3, llama, qwen3-hd32")
        arch: TinyArch = match["arch"]  # type: ignore[assignment]  # checked just above
        if match["sft"]:
            steps = int(match["steps"] or SFT_ARGS.steps)
            label = "sft" if steps == SFT_ARGS.steps else f"sft{steps}"  # the default keeps its cached folder
            folder = cache_root() / f"tiny-{arch}-{label}-v{TINY_VERSION}.{SFT_VERSION}"
            return str(build_cached(folder, lambda target: save_tiny_sft(target, arch, steps)))
        folder = cache_root() / f"tiny-{arch}-v{TINY_VERSION}"
        return str(build_cached(folder, lambda target: save_tiny(target, arch)))
    if kind == "packaged":
        return str(packaged_model_dir(rest))
    if name.endswith(".gguf"):
        return str(gguf_model_dir(name))
    return name


class AdapterError(UserError):
    """An adapter folder that is missing, is not PEFT's, or whose weights file is absent or damaged (named)."""


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def check_adapter_folder(folder: str | Path) -> Path:
    """Refuse, naming folder and file, an adapter folder peft would fail on late or unreadably; return its weights.

    Without this a folder lacking its weights makes peft look for them on the Hub ("outgoing traffic
    disabled"), and truncated weights fail deep in safetensors with no file named.
    """
    path = Path(folder)
    if not path.is_dir():
        raise AdapterError(f"adapter folder {path} does not exist")
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path} is not a PEFT adapter folder: it has no adapter_config.json")
    weights = next((path / name for name in ADAPTER_WEIGHTS if (path / name).is_file()), None)
    if weights is None:
        raise AdapterError(f"adapter folder {path} has no weights file ({' or '.join(ADAPTER_WEIGHTS)})")
    if weights.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), "pt") as file:  # reads and checks the header against the file size
                file.keys()
        except SafetensorError as error:
            raise AdapterError(f"adapter weights {weights} are damaged or truncated ({error})") from error
    return weights


def check_model_available(name: str) -> None:
    """Refuse before loading anything a model name that cannot resolve: a missing local folder, an unknown
    ``tiny:``/``packaged:`` name, or (offline, ``HF_HUB_OFFLINE=1``) a Hub id that is not in the local cache."""
    kind, _, rest = name.partition(":")
    if kind == "tiny":
        match = _TINY.fullmatch(rest)
        if match is None or match["arch"] not in get_args(TinyArch):
            resolve_model_source(name)  # raises its own message naming the valid architectures
        return
    if kind == "packaged" or name.endswith(".gguf"):
        return  # resolved (and explained when missing) by lampo_pl.packaged at load
    if os.path.isdir(name):
        if not (Path(name) / "config.json").is_file():
            raise UserError(f"model.model={name!r}: the folder has no config.json, so it is not a transformers model")
        return
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
    if looks_local:
        raise UserError(f"model.model={name!r}: no such folder")
    from huggingface_hub import constants, try_to_load_from_cache

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if offline and not isinstance(try_to_load_from_cache(name, "config.json"), str):
        raise UserError(f"model.model={name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                        "download it once online, or give a local folder")
    if not offline:
        check_hub_reachable(name)  # seconds, instead of a minute of retries and a traceback on an offline machine


def _torch_dtype(dtype: str) -> torch.dtype:
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; expected e.g. float32, bfloat16, float16")
    return value


def _quantization_config(quantization: Quantization, on_cuda: bool) -> BitsAndBytesConfig | None:
    if quantization == "none":
        return None
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if on_cuda else torch.float32,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"unknown quantization {quantization!r}; expected none, 4bit or 8bit")


def _disable_cpu_bf16_repack(model: nn.Module) -> None:
    """Keep bitsandbytes from repacking 4-bit weights into its backward-less CPU format (point 4 above)."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _load_base(
    source: str,
    dtype: str,
    quantization: Quantization,
    trust_remote_code: bool,
    gradient_checkpointing: bool,
    attn_implementation: str | None,
) -> PreTrainedModel:
    on_cuda = torch.cuda.is_available()
    quant_config = _quantization_config(quantization, on_cuda)
    model = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=_torch_dtype(dtype),
        quantization_config=quant_config,
        # bitsandbytes quantises while placing weights: put them straight on the GPU.
        device_map={"": torch.cuda.current_device()} if quant_config and on_cuda else None,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )
    if quant_config is not None:
        _disable_cpu_bf16_repack(model)
        # Casts norms/embeddings to float32 and, if asked, turns on checkpointing + input grads.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=_GC_KWARGS,
        )
    elif gradient_checkpointing:
        # The transformers 4.x name (5.x deprecates it for activation_checkpointing_enable, until v6),
        # the one peft's prepare_model_for_kbit_training calls too.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=_GC_KWARGS)
        # With a frozen base the embeddings' output needs grad, or checkpointed blocks see no grad path.
        model.enable_input_require_grads()
    return model


def _add_adapters(base: PreTrainedModel, lora: LoraConfig, init_adapter: str | None) -> PeftModel:
    """Attach `policy` (trainable) and `reference` (frozen), equal in weights."""
    if init_adapter is not None:
        check_adapter_folder(init_adapter)
        model = PeftModel.from_pretrained(base, init_adapter, adapter_name=POLICY_ADAPTER, is_trainable=True)
        model.load_adapter(init_adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    else:
        model = get_peft_model(base, lora, adapter_name=POLICY_ADAPTER)
        model.add_adapter(REFERENCE_ADAPTER, LoraConfig(**lora.to_dict()))
        params = dict(model.named_parameters())
        with torch.no_grad():  # LoRA A is random: copy it so both adapters start identical
            for name, param in params.items():
                if _adapter_of(name) == REFERENCE_ADAPTER:
                    param.copy_(params[name.replace(f".{REFERENCE_ADAPTER}", f".{POLICY_ADAPTER}")])
    model.set_adapter(POLICY_ADAPTER)
    for name, param in model.named_parameters():
        if _adapter_of(name) == REFERENCE_ADAPTER:
            param.requires_grad_(False)
    return model


def _load_tokenizer(source: str, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"  # prompts are left-padded so every row's response starts at one column
    if tokenizer.pad_token is None:
        # pad == eos is harmless here: lampo_pl builds every mask from lengths and the first EOS,
        # never from `ids != pad_token_id` (SmolLM2 itself ships pad == eos).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    model: str,
    *,
    dtype: str = "float32",
    quantization: Quantization = "none",
    trust_remote_code: bool = False,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
    init_adapter: str | None = None,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Load the base model, attach the `policy` and `reference` adapters, and load the tokenizer.

    Args:
        model: A Hub id, a local folder, `tiny:<arch>`, `tiny:<arch>-sft` or `packaged:smollm2-135m-instruct`.
        dtype: Torch dtype name of the unquantised weights.
        quantization: `4bit` (NF4, double quantisation, QLoRA), `8bit` (LLM.int8) or `none`.
        trust_remote_code: Run model code shipped with the checkpoint (off: it executes Python).
        lora_r: LoRA rank. lora_alpha: LoRA scale numerator. lora_dropout: dropout on LoRA inputs
            (0 keeps log-probs identical in train and eval mode).
        target_modules: Modules to adapt; `all-linear` is every linear layer but the output head.
        init_adapter: A PEFT adapter folder both adapters start from (its LoRA settings win).
        gradient_checkpointing: Recompute activations in backward (non-reentrant).
        attn_implementation: e.g. `sdpa`, `eager`, `flash_attention_2`; None lets transformers pick.

    Returns:
        The PeftModel in train mode with `policy` active (only its parameters require grad) and
        the tokenizer with left padding and a pad token.
    """
    source = resolve_model_source(model)
    base = _load_base(source, dtype, quantization, trust_remote_code, gradient_checkpointing, attn_implementation)
    lora = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=target_modules,
        bias="none",
        task_type=TaskType.CAUSAL_LM,
    )
    peft_model = _add_adapters(base, lora, init_adapter)
    tokenizer = _load_tokenizer(source, trust_remote_code)
    if peft_model.generation_config.pad_token_id is None:
        peft_model.generation_config.pad_token_id = tokenizer.pad_token_id
    return peft_model.train(), tokenizer


def _adapter_of(param_name: str) -> str | None:
    """The adapter a parameter belongs to, from its name (`...lora_A.policy.weight` -> `policy`)."""
    parts = param_name.split(".")
    for adapter in (POLICY_ADAPTER, REFERENCE_ADAPTER):
        if adapter in parts:
            return adapter
    return None


def trainable_parameters(model: PeftModel) -> list[nn.Parameter]:
    """The `policy` adapter's parameters: what the optimizer gets (never the reference or base)."""
    return [p for name, p in model.named_parameters() if _adapter_of(name) == POLICY_ADAPTER]


def is_zero_adapter(model: PeftModel, name: str) -> bool:
    """True when adapter `name` adds exact zeros: plain LoRA (no DoRA-like variant, no LoRA bias) whose every
    B, or every A, is all zeros, as a fresh LoRA's B is."""
    layers = lora_layers(model, name)
    return bool(layers) and all(is_plain_lora(layer, name) for layer in layers) and any(
        not any(bool(getattr(layer, half)[name].weight.any()) for layer in layers) for half in ("lora_A", "lora_B")
    )


@contextmanager
def reference_adapter(model: PeftModel) -> Iterator[PeftModel]:
    """Run the body with the frozen `reference` adapter active, under `torch.no_grad()`.

    While the reference is a fresh LoRA (B = 0, no ``init_adapter``) its branch adds exact zeros, so
    the body runs with the LoRA branches off instead: bit-identical log-probs without the LoRA
    matmuls (TRL's reference pass is the base model with its adapter disabled too; docs/performance.md).
    Afterwards the previously active adapter (normally `policy`) is active again and every
    parameter's `requires_grad` is as before: `set_adapter` alone would leave them changed.
    """
    if is_zero_adapter(model, REFERENCE_ADAPTER):
        with torch.no_grad(), branches_off(model):
            yield model
        return
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    previous = model.active_adapter
    model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
    try:
        with torch.no_grad():
            yield model
    finally:
        model.set_adapter(previous)
        for name, param in model.named_parameters():
            param.requires_grad_(flags[name])


def adapter_state(model: PeftModel, name: str) -> dict[str, torch.Tensor]:
    """A detached copy of one adapter's weights, keyed without the adapter name (comparable across adapters)."""
    state = get_peft_model_state_dict(model, adapter_name=name)
    return {key: value.detach().clone() for key, value in state.items()}
