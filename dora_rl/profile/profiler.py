"""Profiler: turn an `nn.Sequential` of blocks into a `ModelProfile`.

What is measured, per block, for one sample (batch 1), forward pass:
- FLOPs with `torch.utils.flop_counter.FlopCounterMode`, which counts 2 x MACs of
  convolutions and matrix products (conv, mm, addmm, bmm, ...). Element-wise work
  (BatchNorm, activations, softmax, LayerNorm, pooling, residual adds) and bias adds
  are not counted - the same convention as the published GMAC figures.
- parameter bytes: parameters + buffers the block holds. A parameter shared by two
  blocks (GPT-2's tied embedding / LM head) is counted in both, because a stage
  holding either block needs its own copy.
- output bytes: the block's output activation, which is what crosses a cut.

Why the `meta` device: the zoo is built there, so no weights are allocated or
initialised and the kernels are shape-only; profiling ResNet-50 takes milliseconds.
A block whose ops have no meta kernel is re-run on CPU (with uninitialised weights;
FLOPs do not depend on values).

Floating-point tensors are counted at `dtype_bytes` per element (so one can profile
for fp16 with `dtype_bytes=2`); integer tensors (token ids, BN counters) at their
actual element size.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dora_rl.errors import ProfileError
from dora_rl.profile.model_profile import Block, ModelProfile
from dora_rl.profile.zoo import MODELS, build_model, model_names


def _tensor_bytes(t: torch.Tensor, dtype_bytes: int) -> int:
    per = dtype_bytes if (t.is_floating_point() or t.is_complex()) else t.element_size()
    return int(t.numel()) * int(per)


def _param_bytes(block: nn.Module, dtype_bytes: int) -> int:
    # parameters() / buffers() de-duplicate shared tensors within one block.
    return sum(_tensor_bytes(p, dtype_bytes) for p in block.parameters()) + \
        sum(_tensor_bytes(b, dtype_bytes) for b in block.buffers())


def _to_cpu(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape, dtype=x.dtype) if x.device.type == "meta" else x


def _run_counted(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Run one block under FlopCounterMode; retry on CPU if the meta run is unsupported."""
    try:
        with FlopCounterMode(display=False) as counter:
            y = block(x)
    except (NotImplementedError, RuntimeError):
        on_meta = x.device.type == "meta" or any(p.device.type == "meta" for p in block.parameters())
        if not on_meta:
            raise
        cpu_block = copy.deepcopy(block).to_empty(device="cpu")
        with FlopCounterMode(display=False) as counter:
            y = cpu_block(_to_cpu(x))
        y = y.to("meta") if isinstance(y, torch.Tensor) else y
    return y, int(counter.get_total_flops())


def profile_module(module: nn.Sequential, example_input: torch.Tensor, name: str,
                   dtype_bytes: int = 4) -> ModelProfile:
    """Profile `module` block by block on `example_input` (batch 1) -> `ModelProfile`.

    Each child of the Sequential is a block; block i's output is block i+1's input.
    Raises `ProfileError` if `module` is not an `nn.Sequential` of single-tensor blocks.
    """
    if not isinstance(module, nn.Sequential):
        raise ProfileError(f"profile_module needs an nn.Sequential of blocks (each block one tensor in, one "
                           f"tensor out) so the chain can be cut between blocks; got {type(module).__name__}. "
                           "Wrap your model's stages in nn.Sequential(OrderedDict(name=block, ...)).")
    if len(module) == 0:
        raise ProfileError(f"model {name!r}: the nn.Sequential is empty; it needs at least one block")
    if not isinstance(example_input, torch.Tensor):
        raise ProfileError(f"model {name!r}: example_input must be one tensor, got {type(example_input).__name__}")
    if example_input.dim() == 0 or example_input.shape[0] != 1:
        raise ProfileError(f"model {name!r}: example_input must have batch size 1 (shape [1, ...]), "
                           f"got shape {list(example_input.shape)}")
    was_training = module.training
    module.eval()
    blocks: list[Block] = []
    x = example_input
    try:
        with torch.no_grad():
            for bname, block in module.named_children():
                try:
                    y, flops = _run_counted(block, x)
                except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
                    raise ProfileError(f"model {name!r}: block {bname!r} failed on an input of shape "
                                       f"{list(x.shape)} ({x.dtype}): {e}") from e
                if not isinstance(y, torch.Tensor):
                    raise ProfileError(f"model {name!r}: block {bname!r} returned {type(y).__name__}; every block "
                                       "must return exactly one tensor")
                blocks.append(Block(bname, float(flops), _param_bytes(block, dtype_bytes),
                                    _tensor_bytes(y, dtype_bytes)))
                x = y
    finally:
        module.train(was_training)
    unique_params = sum(p.numel() for p in module.parameters())
    meta = {"input_shape": list(example_input.shape), "input_dtype": str(example_input.dtype).replace("torch.", ""),
            "unique_params": int(unique_params),
            "flops": "2 x MACs of conv/matmul per sample (torch FlopCounterMode); element-wise ops not counted"}
    return ModelProfile(name, _tensor_bytes(example_input, dtype_bytes), blocks, dtype_bytes, meta)


@functools.lru_cache(maxsize=None)
def _zoo_profile_dict(name: str) -> dict:
    model, x = build_model(name, device="meta")
    return profile_module(model, x, name).to_dict()


def get_profile(name_or_path: str | Path) -> ModelProfile:
    """A zoo model name (profiled once per process, then cached) or a path to a profile
    JSON. Returns a fresh `ModelProfile` each call, so callers may modify it."""
    key = str(name_or_path)
    if key in MODELS:
        return ModelProfile.from_dict(copy.deepcopy(_zoo_profile_dict(key)), source=f"zoo model {key!r}")
    p = Path(key)
    if p.suffix == ".json" or p.exists():
        return ModelProfile.load(p)
    raise ProfileError(f"unknown model {key!r}: not a zoo model ({', '.join(model_names())}) "
                       "and not a path to a profile JSON file")
