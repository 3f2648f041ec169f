"""`--distributed N`: start N local ranks of the same command under torchrun (`torch.distributed.run`)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from featurescope.cli_args import dataclass_to_argv
from featurescope.errors import FeaturescopeError


def torchrun_command(command: str, cfg: Any, nproc: int, *, progress: bool = True) -> list[str]:
    """The torchrun command line that runs `featurescope COMMAND` with `cfg` on `nproc` local ranks."""
    args = dataclass_to_argv(cfg, skip=("distributed",))
    quiet = [] if progress else ["-q"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "featurescope", *quiet, command, *args]


def spawn(command: str, cfg: Any, nproc: int, *, progress: bool = True) -> None:
    """Run `featurescope COMMAND` on `nproc` local ranks and wait; a failed rank is a FeaturescopeError.

    Each rank gets cpu_count / nproc threads unless OMP_NUM_THREADS is set.
    """
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run(torchrun_command(command, cfg, nproc, progress=progress), env=env, check=False)
    if proc.returncode != 0:
        raise FeaturescopeError(f"distributed {command} on {nproc} ranks failed (exit {proc.returncode}); "
                                "rerun the same command to resume")
