"""Cluster entry point: runs a sweep on the Ray cluster it is started in.

    ray submit cluster.yaml jobs/sweep.py -- CONFIG [key.path=value ...]
    ray job submit -- python jobs/sweep.py CONFIG [key.path=value ...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, if not pip-installed

from pipeline.__main__ import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    # Join the running cluster instead of starting a local Ray; an explicit ray.address=... later
    # on the command line still wins (overrides apply in order).
    sys.exit(main(["sweep", *args[:1], "ray.address=auto", *args[1:]]))
