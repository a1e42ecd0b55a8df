"""Benchmark: how long the supervisor's start-up emptying of ComfyUI's scratch folders takes (supervisor/scratch.py).

It runs before ComfyUI and the health server start, so it delays the first answer of /health. Fills ComfyUI's
output folder under a temporary SCRATCH_DIR with --files files of --size bytes (in 20 subfolders, as
filename_prefix subfolders would), then times empty_scratch_folders. Not a test.

    ./dev python -m bench.scratch_emptying --files 10000 --size 4096   (from the repository root)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import structlog

from supervisor.config import load_supervisor_settings
from supervisor.scratch import empty_scratch_folders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=4096, help="bytes per file")
    parser.add_argument("--dir", type=Path, default=None, help="where to make the scratch folder (default: /tmp)")
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")))  # noqa: SIM115
    with tempfile.TemporaryDirectory(prefix="scratch-bench-", dir=args.dir) as base:
        config = load_supervisor_settings(
            COMFYUI_COMMAND=sys.executable, SCRATCH_DIR=f"{base}/data", MODELS_DIR=f"{base}/models"
        )
        blob = b"x" * args.size
        for index in range(args.files):
            folder = config.output_dir / f"sub{index % 20}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"ComfyUI_{index:05}_.png").write_bytes(blob)
        os.sync()
        started = time.perf_counter()
        removed = empty_scratch_folders(config, Path(base) / "outputs")
        took_s = time.perf_counter() - started
    print(f"{removed.files} files of {args.size} B ({removed.bytes / 1e6:.0f} MB) removed in {took_s:.3f} s")


if __name__ == "__main__":
    main()
