"""Trial checkpoints: the whole training state at a point of the trajectory, as bytes.

A checkpoint taken after the update of step s holds what point s + 1 starts from: the weights
(the model's state dict, buffers included), the training optimizer's rule state, the hook's state
(the probe bank, its generator, the records so far), the loop's own state (the step-0 loss that
the divergence check compares with), every RNG the loop draws from (torch CPU and
CUDA, Python, NumPy) and the next step, which is also the data stream's position (one minibatch
per point before it). Resuming from it gives the records an uninterrupted run gives, to the bit
on a deterministic device. Where the bytes are kept is the caller's business (pipeline.runner:
the results sink on the driver's node, so that a retry on any node reads them).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.config import Trial

FORMAT = 2  # bumped when the contents change: an older checkpoint is then ignored, not misread


@dataclass(frozen=True)
class Checkpoints:
    """Where a trial's checkpoints go (`save(step, payload)`) and come from (`load()`), and when:
    after the update of every measurement point, and every `every` steps (0: measurement points only)."""

    load: Callable[[], bytes | None]
    save: Callable[[int, bytes], None]
    every: int = 0
    on_resume: Callable[[int], None] | None = None  # called with the step a run resumes at

    def due(self, step: int, measured: bool) -> bool:
        """Checkpoint now, after the update of point `step`?"""
        return measured or (self.every > 0 and (step + 1) % self.every == 0)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # As plain values: torch.load(weights_only=True) reads no NumPy arrays.
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    """random.setstate wants the nested tuples getstate gave (a round trip may give lists)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def to_device(tree: Any, device: torch.device) -> Any:
    """The tensors of nested dicts, lists and tuples moved to `device` (the containers rebuilt)."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(v, device) for v in tree)
    return tree


def capture(trial: Trial, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            hook: Any, loop: dict[str, Any] | None = None) -> bytes:
    """The state to resume at point `step` (the update of step - 1 done), serialised; `loop` is
    the training loop's own state (plain values: pipeline.experiments.loop's divergence reference)."""
    state = {
        "format": FORMAT,
        "trial": trial.to_json(),
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rule_state": getattr(optimizer, "rule_state", None),
        "hook": hook.state_dict(),
        "loop": dict(loop or {}),
        "rng": _rng_state(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def restore(payload: bytes | None, trial: Trial, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
            hook: Any, device: torch.device, loop: dict[str, Any] | None = None) -> int:
    """Loads a checkpoint of this very trial into the live objects (and its loop state into `loop`);
    returns the step to resume at (0 when there is none, or it is of other settings or an older
    format: the trial starts over)."""
    if not payload:
        return 0
    # On the CPU first: the RNG states must stay there; tensors move to `device` where they live.
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT or state.get("trial") != trial.to_json():
        return 0
    model.load_state_dict(state["model"])  # copies into the live parameters, on their device
    optimizer.load_state_dict(state["optimizer"])
    if state["rule_state"] is not None:
        optimizer.rule_state = to_device(state["rule_state"], device)
    hook.load_state_dict(state["hook"], device)
    if loop is not None:
        loop.update(state["loop"])
    _set_rng_state(state["rng"])
    return int(state["step"])
