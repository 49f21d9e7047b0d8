"""Cluster entry point: runs a sweep on the Ray cluster it is started in.

    ray submit cluster.yaml jobs/sweep.py -- CONFIG [key.path=value ...]
    ray job submit --address http://127.0.0.1:8265 -- python jobs/sweep.py CONFIG [key.path=value ...]

Wherever Ray starts it (`ray submit` copies this file to the head's home directory and runs it
there; a job runs in the directory where `ray start` ran), it works in the project checkout: the
config path is taken relative to the current directory if it exists there, else relative to the
project, and relative `results_dir` and SQLite store paths land in the project directory, never
in Ray's temporary session directory.
"""

import os
import sys
from pathlib import Path


def project_dir() -> Path:
    """The checkout this file belongs to; for a copy (`ray submit`), $PIPELINE_PROJECT_DIR or the
    checkout that cluster.yaml puts on every node, ~/adam-sgd-sharpness."""
    here = Path(__file__).resolve().parents[1]
    if (here / "pipeline").is_dir():
        return here
    return Path(os.environ.get("PIPELINE_PROJECT_DIR", Path.home() / "adam-sgd-sharpness")).expanduser()


if __name__ == "__main__":
    project = project_dir()
    args = sys.argv[1:]
    if args and not args[0].startswith("-") and not Path(args[0]).exists() and (project / args[0]).exists():
        args[0] = str(project / args[0])
    elif args and Path(args[0]).exists():
        args[0] = str(Path(args[0]).resolve())
    os.chdir(project)
    sys.path.insert(0, str(project))  # the checkout, if not pip-installed
    from pipeline.__main__ import main

    # Join the running cluster instead of starting a local Ray; an explicit ray.address=... later
    # on the command line still wins (overrides apply in order).
    sys.exit(main(["sweep", *args[:1], "ray.address=auto", *args[1:]]))
