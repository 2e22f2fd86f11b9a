"""Benchmark: how fast `goodnet` answers when there is nothing to compute: `--help`, a command's
`--help`, a usage error.

Building the parser reads every repair's settings off its class; PyTorch, which takes seconds to
import, is imported only when a model or tensor is used (goodnet.lazy_torch). Each command line runs
as a process of its own: once untimed (to warm the file cache and write the bytecode cache), then
--repeats times, the command lines taking turns so that the machine's load falls on all of them
alike. It prints each one's median wall time in seconds and as a ratio to `python -c pass` (the
interpreter's own start), and whether it imported PyTorch (from a run under `python -X
importtime`). `python -c "import torch"` is there for scale.

The runs keep their bytecode cache in a temporary directory, as an installed goodnet keeps its own,
whatever PYTHONDONTWRITEBYTECODE says; with --no-bytecode-cache every start compiles the sources.

    python benchmarks/startup.py
    python benchmarks/startup.py --repeats 21 --no-bytecode-cache
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version

# (label, arguments to this Python, exit status expected)
CASES = [
    ("python -c pass", ["-c", "pass"], 0),
    ('python -c "import torch"', ["-c", "import torch"], 0),
    ("python -m goodnet --help", ["-m", "goodnet", "--help"], 0),
    ("python -m goodnet defend --help", ["-m", "goodnet", "defend", "--help"], 0),
    ("python -m goodnet defend --max-drop abc", ["-m", "goodnet", "defend", "--max-drop", "abc"], 2),
]


def run(args: list[str], expected: int, env: dict[str, str]) -> float:
    """Seconds of wall time one run of `python ARGS` took; it must exit with `expected`."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    elapsed = time.perf_counter() - start
    if done.returncode != expected:
        raise SystemExit(f"python {' '.join(args)} exited {done.returncode}, not {expected}: {done.stderr.strip()}")
    return elapsed


def imports_torch(args: list[str], env: dict[str, str]) -> bool:
    """Whether `python ARGS` imports PyTorch, read off `python -X importtime`'s log."""
    log = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ).stderr
    return any(
        line.rsplit("|", 1)[-1].strip() == "torch" for line in log.splitlines() if line.startswith("import time:")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=11, help="timed runs of each command line (default 11)")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="compile the sources at every start")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
        if args.no_bytecode_cache:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env["PYTHONPYCACHEPREFIX"] = cache
        for _label, argv, expected in CASES:  # untimed: file cache, bytecode cache
            run(argv, expected, env)
        times: dict[str, list[float]] = {label: [] for label, _argv, _expected in CASES}
        for _ in range(args.repeats):
            for label, argv, expected in CASES:
                times[label].append(run(argv, expected, env))
        torch_imported = {label: imports_torch(argv, env) for label, argv, _expected in CASES}
    medians = {label: statistics.median(seconds) for label, seconds in times.items()}
    baseline = medians[CASES[0][0]]

    print(
        f"Python {platform.python_version()}, torch {version('torch')}, {os.cpu_count()} CPUs, "
        f"bytecode cache {'off' if args.no_bytecode_cache else 'on'}; median of {args.repeats} runs each"
    )
    width = max(len(label) for label, _argv, _expected in CASES)
    print(f"{'':{width}}  seconds  x python -c pass  imports torch")
    for label, _argv, _expected in CASES:
        print(
            f"{label:{width}}  {medians[label]:7.3f}  {medians[label] / baseline:16.1f}  "
            f"{'yes' if torch_imported[label] else 'no':>13}"
        )


if __name__ == "__main__":
    main()
