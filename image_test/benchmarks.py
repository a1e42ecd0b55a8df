"""The image's figures in docs/benchmarks.md: one section, replaced by each passing run of ./dev image-test."""

from __future__ import annotations

import datetime
from pathlib import Path

from image_test.build import BuiltImage
from image_test.checks import Report

START = "<!-- image-test figures: written by ./dev image-test -->"
END = "<!-- end of image-test figures -->"


def render(image: BuiltImage, origin: str, report: Report) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ready = report.figures.get("run_to_ready_s")
    health = report.figures.get("start_to_health_s")
    lines = [
        START,
        f"Last passing run: {today}, base {origin}, CPU only (`COMFYUI_EXTRA_ARGS=--cpu`).",
        "",
        "| build | steps from cache | image size | container start → `/health` 200 | `docker run` → `/ready` 200 |",
        "|---:|---:|---:|---:|---:|",
        f"| {image.seconds:.0f} s | {image.cached_steps} of {image.steps} | {image.size_bytes / 1e9:.2f} GB "
        f"| {f'{health:.2f} s' if health else 'n/a'} | {f'{ready:.1f} s' if ready else 'n/a'} |",
        "",
        "Layers (`docker history`, non-empty ones, top first):",
        "",
        "| size | step |",
        "|---:|---|",
    ]
    for layer in image.layers:
        if layer.size_bytes:
            step = layer.step.replace("|", "\\|")[:110]
            lines.append(f"| {layer.size_bytes / 1e6:.1f} MB | `{step}` |")
    lines.append(END)
    return "\n".join(lines)


def write_benchmarks(path: Path, image: BuiltImage, origin: str, report: Report) -> None:
    text = path.read_text()
    section = render(image, origin, report)
    if START in text and END in text:
        before, _, rest = text.partition(START)
        _, _, after = rest.partition(END)
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n## Container image (`./dev image-test`)\n\n" + section + "\n"
    path.write_text(text)
