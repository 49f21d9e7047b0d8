"""The rule interface every algorithm implements: clip grad -> moments -> clip update -> decay."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from torch import Tensor

from pipeline.labels import CLIP_TARGETS
from pipeline.optim.clip import check_fraction, clip_with_threshold

# A rule's state: {"step": int, **per-algorithm lists of tensors aligned with the params}.
State = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """An optimizer as a rule, optax-style: `init(params)`, `update(grads, state, params)` (not pure: see below).

    `update` returns the steps `x_new - x` (signed and scaled by the learning rate) and the new
    state; the weights are never touched. For speed the state's tensors are updated in place, so
    the state passed in is consumed (keep `copy_state(state)` if you need the old one). Returned
    steps never alias the state or the inputs.

    The chain, in the order the paper defines it (docs/science.md, 'Coordinate-wise clipping'):
      1. clip grad (`clip_target="grad"`): the moment estimates that form the update's numerator
         see `coordinate_clip(grads, clip_fraction)`; second moments (Adam, Adafactor) keep the
         raw gradient;
      2. the algorithm's own moments and direction (`_direction`);
      3. clip update (`clip_target="update"`): the final step is clipped (Lion: in place of the
         sign, see lion.py);
      4. decoupled weight decay: `step -= lr_t * weight_decay * x` (AdamW / Lion / transformers'
         Adafactor convention, applied to every algorithm alike).
    A clip fraction of 0 means no clipping at either position.
    """

    lr: float | None
    clip_fraction: float = 0.0
    clip_target: str = "grad"
    weight_decay: float = 0.0

    algorithm: ClassVar[str] = ""
    relative_step_allowed: ClassVar[bool] = False  # lr=None allowed (Adafactor's relative step)
    update_clip_allowed: ClassVar[bool] = True
    update_clip_in_direction: ClassVar[bool] = False  # the rule applies the update clip itself

    def __post_init__(self) -> None:
        if self.lr is None:
            if not self.relative_step_allowed:
                raise ValueError(f"lr must be a positive float for {self.algorithm} "
                                 "(lr=None, the relative step, is adafactor only)")
        elif isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) \
                or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive finite float; got {self.lr!r}")
        check_fraction(self.clip_fraction, name="clip_fraction")
        if self.clip_target not in CLIP_TARGETS:
            raise ValueError(f"clip_target must be one of {CLIP_TARGETS}; got {self.clip_target!r}")
        if self.clip_target == "update" and self.clip_fraction > 0 and not self.update_clip_allowed:
            raise ValueError(f"clip_target='update' is not supported for {self.algorithm} "
                             "(every coordinate of its step has the same magnitude, so the "
                             "clip would be the identity); use clip_target='grad'")
        check_number(self.weight_decay, "weight_decay", high=math.inf)

    @classmethod
    def hparam_names(cls) -> tuple[str, ...]:
        """The `**hparams` this rule accepts (everything but lr and the clip settings)."""
        return tuple(f.name for f in fields(cls) if f.name not in ("lr", "clip_fraction", "clip_target"))

    def init(self, params: Sequence[Tensor]) -> State:
        """Fresh state for `params` (on their devices)."""
        state: State = {"step": 0}
        state.update(self._init([p.detach() for p in params]))
        return state

    def update(self, grads: Sequence[Tensor], state: State, params: Sequence[Tensor], *,
               clipped_grads: tuple[Sequence[Tensor], Tensor | None] | None = None,
               ) -> tuple[list[Tensor], State]:
        """One step: returns (steps x_new - x, state).

        `clipped_grads` lets a caller that runs many rules on the same gradient (the probe bank)
        pass `clip_with_threshold(grads, self.clip_fraction)` (the clipped tensors and tau)
        computed once; it is used only when this rule clips the gradient. After a clipped step,
        `state["clip_tau"]` is the threshold that step used (a 0-dim tensor; pipeline/optim/clip.py).
        """
        grads = [g.detach() for g in grads]
        params = [p.detach() for p in params]
        if len(grads) != len(params):
            raise ValueError(f"grads and params must have the same length; got {len(grads)} and {len(params)}")
        numer = grads
        if self.clips_grad:
            numer, tau = clipped_grads if clipped_grads is not None \
                else clip_with_threshold(grads, self.clip_fraction)
            numer, state["clip_tau"] = list(numer), tau
        state["step"] += 1
        steps, lrs = self._direction(numer, grads, state, params)
        if self.clips_update and not self.update_clip_in_direction:
            steps, state["clip_tau"] = clip_with_threshold(steps, self.clip_fraction)
        if self.weight_decay:
            for step, x, lr in zip(steps, params, lrs):
                step.sub_(x * (lr * self.weight_decay))
        return steps, state

    @property
    def clips_grad(self) -> bool:
        return self.clip_fraction > 0 and self.clip_target == "grad"

    @property
    def clips_update(self) -> bool:
        return self.clip_fraction > 0 and self.clip_target == "update"

    def _init(self, params: list[Tensor]) -> State:
        raise NotImplementedError

    def _direction(self, numer: list[Tensor], raw: list[Tensor], state: State,
                   params: list[Tensor]) -> tuple[list[Tensor], list[float | Tensor]]:
        """Advance the state; return fresh step tensors and the per-tensor lr (for weight decay).

        `numer` is the (possibly clipped) gradient for first moments, `raw` the unclipped one for
        second moments; `state["step"]` is already the 1-based index of this step.
        """
        raise NotImplementedError


def check_number(value: Any, name: str, *, high: float = 1.0, high_open: bool = True) -> float:
    """`value` as a float in [0, high) (or [0, high]); ValueError naming `name` otherwise."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value \
        and (value < high if high_open else value <= high) and not math.isnan(value)
    if not ok:
        raise ValueError(f"{name} must be a float in [0, {high}{')' if high_open else ']'}; got {value!r}")
    return float(value)


def copy_state(state: State) -> State:
    """A deep copy of a rule state (tensors cloned), e.g. to branch a probe."""
    def copy(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.clone()
        if isinstance(value, (list, tuple)):
            return type(value)(copy(v) for v in value)
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        return value
    return copy(state)

