"""Time `make demo` on a fresh clone: install, harvest, train, analyse, evaluate, explorer answering.

    python benchmarks/bench_demo.py [--scale small] [--out benchmarks/results/demo.json] [--keep DIR]

Clones this repository's HEAD into a temporary folder and runs `CI=true make demo` there (the explorer is
started, checked once and stopped), with an empty model cache (`FEATURESCOPE_CACHE`) so the one-time GGUF
conversion is counted. pip's own download cache is whatever this machine has: a machine that must download
torch and transformers adds that time. Records the total wall time, the install time (everything before the
demo's first line) and each step's seconds as the demo prints them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from featurescope.atomic import write_json

REPO = Path(__file__).resolve().parents[1]
STEP = re.compile(r"^\[demo\] ([a-z ]+): .*\((\d+(?:\.\d+)?) s\)\s*$")
DONE = re.compile(r"^\[demo\] pipeline done in (\d+(?:\.\d+)?) s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="small", choices=("tiny", "small", "full"))
    p.add_argument("--out", default="benchmarks/results/demo.json")
    p.add_argument("--keep", default="", help="an empty folder to clone into and keep (to browse the demo after)")
    args = p.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = args.keep or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-demo-"))
        clone, cache = Path(tmp) / "featurescope", Path(tmp) / "model-cache"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                                check=True).stdout.strip()
        env = {**os.environ, "CI": "true", "FEATURESCOPE_CACHE": str(cache)}
        env.pop("VIRTUAL_ENV", None)
        start = time.perf_counter()
        first_line = None
        steps: dict[str, float] = {}
        pipeline = None
        with subprocess.Popen(["make", "demo", f"DEMO_SCALE={args.scale}", "DEMO_PORT=0"], cwd=clone, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              stdin=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                if line.startswith("[demo]") and first_line is None:
                    first_line = time.perf_counter() - start
                if m := STEP.match(line.strip()):
                    steps[m.group(1)] = float(m.group(2))
                if m := DONE.match(line.strip()):
                    pipeline = float(m.group(1))
        total = time.perf_counter() - start
        if proc.returncode != 0:
            sys.exit(f"make demo failed (exit {proc.returncode})")
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "commit": commit, "scale": args.scale, "total_seconds": total, "install_seconds": first_line,
        "pipeline_seconds": pipeline, "steps_seconds": steps,
        "note": "fresh clone, empty model cache, pip download cache as found on the machine",
    }
    write_json(args.out, result)
    print(f"make demo: {total:.0f} s in all ({first_line or 0:.0f} s install, pipeline {pipeline} s); "
          f"results: {args.out}")


if __name__ == "__main__":
    main()
