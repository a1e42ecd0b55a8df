"""Every command line the docs and the README give for one of our entry points parses with that entry point's own
argument parser: a renamed flag, a dropped subcommand or a bad choice fails here, not at 2 a.m.

Parsed, not run (most would contact a provider); the ones that can run offline are run by their own tests."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import re
import shlex
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from demo.cli import demo_parser
from queue_manager.__main__ import build_add_participant_parser, build_remove_participant_parser
from queue_manager.__main__ import build_parser as queue_parser
from scaler.cli import _parser as scaler_parser
from scaler.deploy.command import parse_args as deploy_parse_args
from scaler.simulator.cli import _parser as simulate_parser
from standins.comfyui import _parse_args as comfyui_sim_parse_args

REPO = Path(__file__).resolve().parents[2]
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]

# How a command is written in the docs -> what parses its arguments. Longest first: `comfy-scaler simulate`
# goes to the simulator, plain `comfy-scaler` to the scaler's own parser.
PARSERS: dict[str, Callable[[list[str]], object]] = {
    "comfy-scaler simulate": lambda argv: simulate_parser().parse_args(argv),
    "comfy-scaler deploy": deploy_parse_args,
    "comfy-scaler": lambda argv: scaler_parser().parse_args(argv),
    "./deploy-serverless.sh": deploy_parse_args,
    "python -m scaler.deploy": deploy_parse_args,
    "python -m scaler.simulator": lambda argv: simulate_parser().parse_args(argv),
    "comfy-serverless queue add-participant": lambda argv: build_add_participant_parser().parse_args(argv),
    "python -m queue_manager add-participant": lambda argv: build_add_participant_parser().parse_args(argv),
    "comfy-serverless queue remove-participant": lambda argv: build_remove_participant_parser().parse_args(argv),
    "python -m queue_manager remove-participant": lambda argv: build_remove_participant_parser().parse_args(argv),
    "comfy-serverless queue": lambda argv: queue_parser().parse_args(argv),
    "python -m queue_manager": lambda argv: queue_parser().parse_args(argv),
    "comfy-serverless demo": lambda argv: demo_parser().parse_args(argv),
    "./dev demo": lambda argv: demo_parser().parse_args(argv),
    "python -m standins.comfyui": comfyui_sim_parse_args,
    "comfyui-sim": comfyui_sim_parse_args,
}
# A command where a shell line or an inline code span starts with it, after a prompt, sudo, timeout N, VAR=value
# assignments (`SCALER_BACKEND=local comfy-scaler run`) or ./dev (the venv); `journalctl -u comfy-scaler` is not one.
COMMAND = re.compile(
    r"^\s*(?:\$\s+)?(?:sudo\s+)?(?:timeout\s+\d+\s+)?(?:[A-Z_]+=\S*\s+)*(?:\./dev\s+(?=comfy))?("
    + "|".join(re.escape(prefix) for prefix in PARSERS)
    + r")(?![\w.-])(.*)"
)
# Where a documented command's own arguments end: a comment, a pipe, another command, a closing backquote.
END = re.compile(r"\s#|\s\||&&|;|`|\)\s|\)$|\s{3,}|\.\s|\.$|,\s")


def command_lines(doc: Path) -> list[tuple[int, str, str]]:
    """(line number, command, its arguments) for each entry point the doc shows, in code blocks and inline code."""
    found = []
    in_block, held, start = False, "", 0
    for number, raw in enumerate(doc.read_text().splitlines(), start=1):
        if in_block and raw.endswith("\\"):  # a shell line continued with \
            held, start = held + (raw[:-1].strip() if held else raw[:-1].rstrip()) + " ", start or number
            continue
        line, held, number, start = held + (raw.strip() if held else raw), "", start or number, 0
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        spans = [line] if in_block else re.findall(r"`([^`]+)`", line)
        for span in spans:
            match = COMMAND.match(span)
            if match:
                rest = END.split(match[2], maxsplit=1)[0].strip()
                if rest or match[1] != "comfy-scaler":  # a bare `comfy-scaler` names the program
                    found.append((number, match[1], rest))
    return found


def arguments(rest: str) -> list[str] | None:
    """The argv the doc shows, placeholders filled in; None when it trails off (`…`: "and more") into prose."""
    rest = re.sub(r"<[^>]+>", "x", rest)
    rest = re.sub(r"\[(--?[\w-]+)\]", r"\1", rest)  # `run [--dry-run]`: the option may be given
    if "…" in rest or "..." in rest:
        rest = re.split(r"…|\.\.\.", rest)[0]
    try:
        words = shlex.split(rest)
    except ValueError:
        return None
    return words


DOCUMENTED = [(doc, number, command, rest) for doc in DOCS for number, command, rest in command_lines(doc)]


def test_the_commands_are_found():
    commands = {command for _, _, command, _ in DOCUMENTED}
    assert {"comfy-scaler", "./deploy-serverless.sh", "comfy-scaler simulate", "./dev demo"} <= commands
    assert len(DOCUMENTED) > 50


@pytest.mark.parametrize(
    ("doc", "number", "command", "rest"), DOCUMENTED, ids=[f"{d.name}:{n}" for d, n, _, _ in DOCUMENTED]
)
def test_each_documented_command_line_parses(doc, number, command, rest):
    argv = arguments(rest)
    if argv is None:
        pytest.skip("no arguments to check")
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            PARSERS[command](argv)
    except SystemExit as exc:
        assert exc.code == 0, f"{doc.name}:{number}: `{command} {rest}` is refused: {errors.getvalue().strip()}"


def options_in_help(parse: Callable[[list[str]], object]) -> set[str]:
    """The --options a command's --help lists."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse(["--help"])
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", out.getvalue())) - {"--help"}


def flag_table(doc: Path) -> dict[str, str]:
    """--option -> its default cell (or meaning, in a two-column table), from the doc's `| flag |` table."""
    text = doc.read_text()
    table = text.split("\n| flag |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for row in table.splitlines()[2:]:
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        if cells[0].startswith("anything else"):  # ComfyUI's options the simulator takes and ignores
            continue
        for option in re.findall(r"`(--[a-z][a-z-]*)", cells[0]):
            rows[option] = cells[1]
    return rows


@pytest.mark.parametrize(
    ("doc", "parse"),
    [("queue-manager.md", PARSERS["python -m queue_manager"]), ("comfyui-simulator.md", comfyui_sim_parse_args)],
    ids=["queue-manager.md", "comfyui-simulator.md"],
)
def test_each_flag_table_lists_exactly_the_command_s_options(doc, parse):
    assert set(flag_table(REPO / "docs" / doc)) == options_in_help(parse)


def test_the_queue_manager_s_flag_table_gives_its_defaults():
    parser = queue_parser()
    rows = flag_table(REPO / "docs" / "queue-manager.md")
    for option, cell in rows.items():
        default = parser.get_default(option.removeprefix("--").replace("-", "_"))
        if default is not None:  # --token: the environment's
            assert cell.strip("`") == str(default), option


SCRIPTS = sorted(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])


def test_the_readme_says_how_to_run_each_console_script_in_a_clone():
    """The docs write `comfy-scaler status`; in a fresh clone that is `command not found` without `./dev`."""
    section = (REPO / "README.md").read_text().split("## Commands in a clone", 1)[1].split("\n## ", 1)[0]
    assert "./dev" in section
    assert [script for script in SCRIPTS if f"`{script}" not in section] == []


def _dev_is_installed() -> bool:
    """./dev would install first (minutes, the network) unless .venv holds this pyproject.toml with the dev tools."""
    stamp = REPO / ".venv" / ".installed"
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    return stamp.exists() and stamp.read_text().strip() in (digest, f"{digest} [dev]")


@pytest.mark.skipif(not _dev_is_installed(), reason="./dev would install the project first")
@pytest.mark.parametrize(
    "argv",
    [[script, "--help"] for script in SCRIPTS]
    + [["python", "-m", "standins.comfyui", "--help"], ["python", "-m", "queue_manager", "--help"]],
    ids=lambda argv: " ".join(argv[:-1]),
)
def test_dev_runs_each_documented_entry_point_from_another_folder(argv, tmp_path):
    run = subprocess.run([str(REPO / "dev"), *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-1000:]
    assert "usage" in (run.stdout + run.stderr).lower()


def demo_ranges() -> dict[str, tuple[str, str]]:
    """--option -> (low, high) from demo.md's "Each number has a range: `--jobs` 1-10000, `--spread-s` and
    `--idle-to-zero-s` 0-86400, …"."""
    text = (REPO / "docs" / "demo.md").read_text().replace("\n", " ")
    sentence = text.split("Each number has a range", 1)[1].split(";", 1)[0]
    ranges = {}
    options_and_range = r"((?:`--[a-z-]+`(?:, | and ))*`--[a-z-]+`) (\d[\d.e]*)-(\d[\d.e]*)"
    for options, low, high in re.findall(options_and_range, sentence):
        ranges |= dict.fromkeys(re.findall(r"`(--[a-z-]+)`", options), (low, high))
    return ranges


def test_demo_md_gives_each_numeric_option_of_the_demo_its_range():
    """It said seconds 0-86400, which --target-wait-s refuses at 0, and "--help shows each range", which it gives for
    three; --bad-jobs, --spread-s, --idle-to-zero-s, --target-wait-s and --price-per-hour had none."""
    numeric = {action.option_strings[-1]: action.type for action in demo_parser()._actions
               if callable(action.type) and isinstance(_parsed(action.type, "1"), int | float)}
    ranges = demo_ranges()
    assert set(ranges) == set(numeric)
    wrong = []
    for option, (low, high) in ranges.items():
        parse = numeric[option]
        below, above = float(low) - 1, float(high) + 1
        bounds_refused = [value for value in (low, high) if _refused(parse, value)]
        beyond_taken = [value for value in (below, above) if not _refused(parse, f"{value:g}")]
        if bounds_refused or beyond_taken:
            wrong.append(f"{option} {low}-{high}: refuses {bounds_refused}, takes {beyond_taken}")
    assert wrong == []


def _parsed(parse: Callable[[str], object], text: str) -> object:
    """What the option's type makes of ``text``; None when it refuses it."""
    try:
        return parse(text)
    except argparse.ArgumentTypeError:
        return None


def _refused(parse: Callable[[str], object], text: str) -> bool:
    return _parsed(parse, text) is None
