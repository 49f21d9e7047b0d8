"""Hub models and tokenizers for `source: hub`, failing in one line that names the alternative."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from transformers.utils import logging as hf_logging

from pipeline.data import HubUnavailableError

R = TypeVar("R")

# The paper's checkpoints (docs/science.md); their tokenizers come from the same repositories.
HUB_MODELS = {
    "causal_lm": "EleutherAI/gpt-neo-125M",
    "translation": "t5-small",
    "classification": "bert-base-uncased",
}


def from_hub(workload: str, what: str, alternative: str, load: Callable[[], R]) -> R:
    """Run `load()`; turn any failure into pipeline.data's HubUnavailableError, one line naming
    the offline alternative (pipeline.data's hub dataset loaders raise it themselves).

    Every exception is caught on purpose: offline, huggingface_hub, datasets and transformers
    raise OSError, ConnectionError, LocalEntryNotFoundError, DatasetNotFoundError... depending on
    the version and on what is cached, and each only means "not available here".
    """
    try:
        with quiet_loading():
            return load()
    except HubUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 (see docstring)
        reason = (str(exc).strip().splitlines() or [""])[0][:160]
        raise HubUnavailableError(
            f"workload {workload!r}: {what} is not reachable on the Hugging Face hub "
            f"({type(exc).__name__}: {reason}); offline alternative: set the workload's "
            f"`source: local` ({alternative})"
        ) from exc


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence from_pretrained's progress bar and load report (library code does not print);
    the previous logging settings come back afterwards."""
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
