"""The project's vocabulary, free of torch: optimizer labels and their parse, probe specs and their
display order, the trajectory and setting keys, and which tables each experiment writes."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictFloat, StrictStr
from pydantic.dataclasses import dataclass

CLIP_TARGETS = ("grad", "update")
# The update histogram's log10 range per scale when a config gives none (paper Fig. 1: |v_i| from
# 1e-15 to 10; the relative form |v_i| / max|v| from 1e-8 to 1). pipeline/measure/histogram.py.
HISTOGRAM_RANGE = {"absolute": (-15.0, 1.0), "relative": (-8.0, 0.0)}
ClipTarget = Literal["grad", "update"]
Fraction = Annotated[StrictFloat, Field(ge=0, le=1)]

# Experiments and the trial tables each always writes (written empty when it ran with no rows,
# so that a sweep's tables/ does not change shape with what happened to be logged). The
# sharpness experiment adds "curvature" when `measure.curvature` is on.
EXPERIMENT_TABLES: dict[str, tuple[str, ...]] = {
    "sharpness": ("sharpness", "landscape", "histogram", "topk_share", "landscape_summary"),
    "convergence": ("convergence",),
    "smoothness": ("smoothness",),
}
EXPERIMENTS = tuple(EXPERIMENT_TABLES)

# One training setting: the optimizer a trial trains with, within a sweep and workload, with the
# block's label and the optimizer's other hyperparameters (`hparams` as canonical JSON, see
# hparams_key): two blocks that differ only in, say, momentum are two settings, never merged.
SETTING_KEY = ("sweep", "label", "workload", "algorithm", "clip_fraction", "clip_target", "hparams")
# One trajectory: a setting at one learning rate (seeds are its repeats).
TRAJECTORY_KEY = SETTING_KEY + ("lr",)


def hparams_key(hparams: Mapping[str, Any]) -> str:
    """A block's optimizer hparams as one canonical string (sorted keys, no spaces): '{}' for none,
    '{"momentum":0.5}'; equal settings give equal strings, so tables can group and join on it."""
    return json.dumps(dict(hparams), sort_keys=True, separators=(",", ":"))


def hparams_text(hparams: str | None) -> str:
    """The hparams column for people: 'momentum=0.5, nesterov=true'; '' for none."""
    if not hparams:
        return ""
    data = json.loads(hparams)
    return ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in data.items())


def setting_text(row: Mapping[str, Any]) -> str:
    """A row's block label and hparams as a short suffix for headings and legends ('' for neither)."""
    parts = [f"[{row['label']}]" if row.get("label") else "", hparams_text(row.get("hparams"))]
    return " ".join(p for p in parts if p)

_LABEL = re.compile(r"(?P<algorithm>[a-z_]+?)(?:_clip(?P<update>update)?(?P<fraction>[0-9.e+-]+))?")


def optimizer_label(algorithm: str, clip_fraction: float, clip_target: str) -> str:
    """An optimizer and its clip as one word, used in every table: sgd, sgd_clip0.1, adam_clipupdate0.5."""
    if clip_fraction == 0:
        return algorithm
    return f"{algorithm}_clip{'update' if clip_target == 'update' else ''}{clip_fraction:g}"


def parse_label(label: str) -> tuple[str, float, str]:
    """The inverse of optimizer_label: (algorithm, clip_fraction, clip_target); ValueError otherwise."""
    match = _LABEL.fullmatch(label)
    if match is None:
        raise ValueError(f"label: {label!r} is not an optimizer label such as sgd, sgd_clip0.1 or adam_clipupdate0.5")
    fraction = float(match["fraction"]) if match["fraction"] else 0.0
    return match["algorithm"], fraction, "update" if match["update"] else "grad"


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ProbeSpec:
    """One probe optimizer (config `measure.probes` items too). `lr=None` is Adafactor's relative
    step; a probe's lr only scales its direction, which the measurements normalise away."""

    label: StrictStr  # stable, used in every table: "sgd", "sgd_clip0.1", ...
    algorithm: StrictStr
    clip_fraction: Fraction = 0.0
    clip_target: ClipTarget = "grad"
    lr: Annotated[StrictFloat, Field(gt=0)] | None = 1.0
    hparams: Mapping[str, Any] = Field(default_factory=dict)

    @classmethod
    def of(cls, algorithm: str, clip_fraction: float = 0.0, clip_target: str = "grad",
           lr: float | None = 1.0) -> ProbeSpec:
        """A probe labelled by optimizer_label."""
        return cls(optimizer_label(algorithm, clip_fraction, clip_target), algorithm, clip_fraction, clip_target, lr)

    def rule(self) -> Any:
        """The pipeline.optim rule this probe runs (ValueError on a bad field)."""
        from pipeline.optim.rules import make_rule

        if not self.label:
            raise ValueError(f"label must be a non-empty string; got {self.label!r}")
        return make_rule(self.algorithm, lr=self.lr, clip_fraction=self.clip_fraction,
                         clip_target=self.clip_target, **dict(self.hparams))


# The paper's twelve probes (its code's algorithm_list_*_machine_translation), in its order.
# Clip fractions are the paper's defaults: 0.1 for SGD / normalized SGD, 0.5 for the adaptive ones.
DEFAULT_PROBES: tuple[ProbeSpec, ...] = (
    ProbeSpec.of("sgd"),
    ProbeSpec.of("sgd", 0.1),
    ProbeSpec.of("adam"),
    ProbeSpec.of("adam", 0.5),
    ProbeSpec.of("adam", 0.5, "update"),
    ProbeSpec.of("adafactor", lr=None),
    ProbeSpec.of("adafactor", 0.5, lr=None),
    ProbeSpec.of("lion"),
    ProbeSpec.of("lion", 0.5, "update"),
    ProbeSpec.of("sign_sgd"),
    ProbeSpec.of("normalized_sgd"),
    ProbeSpec.of("normalized_sgd", 0.1),
)
# The order in which tables and figures list probes; labels not in it follow, alphabetically.
PROBE_ORDER: tuple[str, ...] = tuple(s.label for s in DEFAULT_PROBES)
# The unclipped adaptive probes of paper Table 1 (normalized SGD is not adaptive per coordinate).
ADAPTIVE_PROBES = ("adam", "adafactor", "lion", "sign_sgd")


def probe_sort_key(label: str) -> tuple[int, str]:
    return (PROBE_ORDER.index(label) if label in PROBE_ORDER else len(PROBE_ORDER), label)
