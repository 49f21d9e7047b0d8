"""The probe bank: every algorithm's pseudo-update from the same gradients, weights untouched.

Pan & Li 2023 (arXiv 2306.00204), section 3: along one training trajectory, each step's minibatch
gradient is also fed to probe optimizers that keep their own state; their current updates are the
directions whose sharpness is measured. The probes run the very rules that `make_optimizer`
trains with (pipeline.optim.rules), so a probe and a training optimizer of the same algorithm and
clip produce bit-identical steps from the same gradients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from pipeline.labels import DEFAULT_PROBES, ProbeSpec
from pipeline.optim.base import Rule, State
import torch

from pipeline.optim.clip import clip_with_threshold

__all__ = ["DEFAULT_PROBES", "ProbeBank", "ProbeSpec"]


class ProbeBank:
    """Probe optimizers that follow the training gradients without moving the weights.

    `step(grads, params)` advances every probe's state (on the params' device; no host copies);
    `directions()` gives label -> (param name -> the step that probe computed last);
    `diagnostics()` what explains odd values at that step (clip thresholds, zero gradient
    coordinates). Work is shared: the clipped gradient is computed once per distinct clip fraction
    per step.
    """

    def __init__(self, params: Mapping[str, Tensor], specs: Sequence[ProbeSpec] = DEFAULT_PROBES) -> None:
        if not isinstance(params, Mapping) or not params:
            raise ValueError("params must be a non-empty mapping name -> tensor")
        specs = tuple(specs)
        if not specs:
            raise ValueError("specs must hold at least one ProbeSpec; got none")
        if not all(isinstance(s, ProbeSpec) for s in specs):
            raise ValueError("specs must be ProbeSpec instances")
        labels = [s.label for s in specs]
        duplicates = sorted({x for x in labels if labels.count(x) > 1})
        if duplicates:
            raise ValueError(f"specs labels must be unique; repeated: {duplicates}")
        rules = [s.rule() for s in specs]  # all checks before any state exists
        self.names = list(params)
        self.labels = labels
        self._shapes = {n: params[n].shape for n in self.names}
        tensors = [params[n].detach() for n in self.names]
        self._rules: list[Rule] = rules
        self._states: list[State] = [r.init(tensors) for r in rules]
        self._steps: list[list[Tensor]] | None = None
        self._zeros: Tensor | None = None  # exactly-zero coordinates of the last gradient

    def step(self, grads: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> None:
        """Advance every probe with this gradient; `params` are the current weights (read only)."""
        g = self._ordered(grads, "grads")
        x = self._ordered(params, "params")
        clipped: dict[float, tuple[list[Tensor], Tensor | None]] = {}
        steps = []
        for rule, state in zip(self._rules, self._states):
            shared = None
            if rule.clips_grad:
                if rule.clip_fraction not in clipped:
                    clipped[rule.clip_fraction] = clip_with_threshold(g, rule.clip_fraction)
                shared = clipped[rule.clip_fraction]
            s, _ = rule.update(g, state, x, clipped_grads=shared)
            steps.append(s)
        self._steps = steps
        self._zeros = torch.stack([(t == 0).sum() for t in g]).sum()  # on the device: no host sync

    def directions(self) -> dict[str, dict[str, Tensor]]:
        """label -> (param name -> that probe's step at the last `step` call)."""
        if self._steps is None:
            raise RuntimeError("directions() needs a step() first: no probe has an update yet")
        return {label: dict(zip(self.names, s)) for label, s in zip(self.labels, self._steps)}

    def diagnostics(self) -> dict[str, object]:
        """At the last `step`: `grad_zero_fraction`, the share of exactly-zero coordinates of the
        gradient (they sit at the bottom of the clip's ranking and pull tau down), and
        `clip_tau`, label -> the threshold tau each clipping probe used (None for the others)."""
        if self._zeros is None:
            raise RuntimeError("diagnostics() needs a step() first")
        total = sum(s.numel() for s in self._shapes.values())
        taus = {label: state.get("clip_tau") for label, state in zip(self.labels, self._states)}
        return {"grad_zero_fraction": int(self._zeros) / total,
                "clip_tau": {k: None if t is None else float(t) for k, t in taus.items()}}

    def _ordered(self, tensors: Mapping[str, Tensor], what: str) -> list[Tensor]:
        if not isinstance(tensors, Mapping):
            raise ValueError(f"{what} must be a mapping name -> tensor")
        missing = [n for n in self.names if n not in tensors]
        extra = [n for n in tensors if n not in self._shapes]
        if missing or extra:
            raise ValueError(f"{what} must have exactly the bank's parameter names; "
                             f"missing {missing[:5]}, unexpected {extra[:5]}")
        wrong = [n for n in self.names if tensors[n].shape != self._shapes[n]]
        if wrong:
            raise ValueError(f"{what} shapes differ from the bank's params for {wrong[:5]}")
        return [tensors[n].detach() for n in self.names]
