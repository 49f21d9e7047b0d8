"""How a report was made: the commands that regenerate it, the sweep's config and the package versions."""

from __future__ import annotations

import platform
from importlib import metadata

from pipeline.layout import ResultsLayout

# The packages whose versions decide the numbers and the figures (pyproject.toml pins them).
PACKAGES = ("torch", "ray", "mlflow", "transformers", "datasets", "tokenizers", "pyarrow", "pandas", "numpy",
            "matplotlib", "pydantic", "markdown-it-py")


def versions() -> dict[str, str]:
    """Python's and each package's installed version ('not installed' where it is missing)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def provenance_section(layout: ResultsLayout) -> list[str]:
    """The report's last section, as markdown lines: no date in it, so the same sweep gives the same text."""
    out = ["## How this report was made", "",
           "Regenerate the tables, figures, `report.md` and `report.html` from the trials' records:", "",
           "```", f"python -m pipeline aggregate {layout.sweep_dir}", "```", ""]
    config = layout.config_path
    if config.is_file():
        out += ["Re-run the sweep itself (finished trials are skipped; remove the directory to start over):", "",
                "```", f"python -m pipeline sweep {config}", "```", "",
                f"### Configuration (`{config.name}`, overrides applied)", "",
                "```yaml", config.read_text().rstrip(), "```", ""]
    else:
        out += ["(No `config.yaml` in this sweep directory: it was made before sweeps wrote one.)", ""]
    out += ["### Package versions (of the environment that built this report)", "",
            "| package | version |", "|---|---|"]
    out += [f"| {name} | {version} |" for name, version in versions().items()]
    return out + [""]
