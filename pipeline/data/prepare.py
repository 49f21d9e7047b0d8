"""Prepare the data sources into the cache: `prepare()` and `python -m pipeline setup`."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from pipeline.data.cache import (DataPreparationError, check_source, locked, replace_dir,
                                 resolve_data_dir, staging_dir, write_manifest)
from pipeline.data.sources import SOURCES, SOURCES_BY_NAME


def validate_names(names: Iterable[str] | None, *, argument: str = "names") -> list[str]:
    if names is None:
        return list(SOURCES)
    if isinstance(names, str):
        names = [names]
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in SOURCES_BY_NAME]
    if unknown:
        raise ValueError(f"{argument}: unknown source {unknown[0]!r}; "
                         f"allowed: {', '.join(SOURCES)}")
    return names


def prepare_source(name: str, data_dir: Path, *, force: bool = False) -> tuple[Path, str]:
    """Make `data_dir/name` complete; return its path and what was done.

    Status is "cached" (manifest, sizes and sha256 all match: nothing done), "prepared" (there
    was nothing) or "rebuilt (<reason>)". Holds the source's lock, so concurrent setups on a
    shared cache build it once.
    """
    source = SOURCES_BY_NAME[name]
    target = data_dir / name
    with locked(data_dir, name):
        for stale in [*data_dir.glob(f".{name}.partial-*"), *data_dir.glob(f".{name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build; we hold the lock
        problem = check_source(target, source_version=source.version, checksums=True)
        if problem is None and not force:
            return target, "cached"
        existed = target.exists()
        with staging_dir(data_dir, name) as stage:
            out, scratch = stage / "out", stage / "scratch"
            out.mkdir()
            scratch.mkdir()
            try:
                meta = source.build(out, scratch)
            except DataPreparationError:
                raise
            except Exception as exc:  # unexpected upstream content: name the source
                raise DataPreparationError(f"{name}: {type(exc).__name__}: {exc}") from exc
            write_manifest(out, source=name, source_version=source.version, meta=meta)
            replace_dir(out, target)
    if not existed:
        return target, "prepared"
    return target, f"rebuilt ({'forced' if force else problem})"


def prepare(names: Iterable[str] | None = None, data_dir: str | os.PathLike | None = None, *,
            force: bool = False) -> dict[str, Path]:
    """Prepare the named sources (None = all) and return name -> cache folder.

    Idempotent: a complete source is only checked. Every source is attempted; if some fail,
    the others stay prepared and one DataPreparationError names the failures.
    """
    names = validate_names(names)
    root = resolve_data_dir(data_dir)
    done, failures = {}, []
    for name in names:
        try:
            done[name] = prepare_source(name, root, force=force)[0]
        except DataPreparationError as exc:
            failures.append(str(exc))
    if failures:
        raise DataPreparationError("; ".join(failures))
    return done


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # report as `error: ...`, exit 2, from main() (no SystemExit)
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m pipeline setup",
                     description="Download and prepare the corpora into the local cache "
                                 "(idempotent: a complete cache is only verified).")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="cache folder (default: $PIPELINE_DATA_DIR or "
                             "~/.cache/adam-sgd-sharpness)")
    parser.add_argument("--only", nargs="+", action="extend", metavar="NAME",
                        help=f"prepare only these sources: {', '.join(SOURCES)}")
    parser.add_argument("--force", action="store_true", help="rebuild even if the cache is valid")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        names = validate_names(args.only, argument="--only")
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except (_UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    root = resolve_data_dir(args.data_dir)
    print(f"data dir: {root}")
    failed = 0
    for name in names:
        start = time.perf_counter()
        try:
            path, status = prepare_source(name, root, force=args.force)
        except DataPreparationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name:<17} {status} ({time.perf_counter() - start:.1f} s)  {path}", flush=True)
    return 1 if failed else 0
