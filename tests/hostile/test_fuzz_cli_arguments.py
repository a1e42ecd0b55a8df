"""Hostile values for every option of every command line: comfy-scaler (its commands, simulate, deploy), the queue
manager (and add/remove-participant), `comfy-serverless demo`, the ComfyUI stand-in, comfy-worker and
comfy-supervisor.

The rule: bad input gets exit 2 and a line on stderr naming the option, no traceback, nothing written or started; a
value taken is finite and in its documented range. Each parser (or main, the step that would start something
replaced by a stop) is called in-process for every option and value; one subprocess per program proves the exit
code and the missing traceback as a shell sees them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import demo.cli as demo_cli
import queue_manager.__main__ as queue_cli
import scaler.simulator.cli as simulate_cli
import scaler.simulator.providers as simulator_providers
import standins.comfyui as comfyui_sim
import supervisor.__main__ as supervisor_cli
import worker.__main__ as worker_cli
from scaler import cli as scaler_cli
from scaler.deploy import command as deploy_command
from scaler.policy import MAX_REPLICAS_LIMIT, ScalingConfig

from ..conftest import run_module_to_exit

FOLDER = "<a folder>"  # replaced by an existing folder
# "\u0661\u0662": Arabic-Indic 12, "\U0001d7d9": a double-struck 1 (int() and float() take both); "a\x1bb": an escape
HOSTILE = (
    "", " ", "nan", "inf", "-inf", "-1", "0", "1e309", "99999999999999999999999", "\u0661\u0662", "\U0001d7d9",
    "a\x1bb", "x" * 100_000, "/dev/zero", "/dev/stdin", FOLDER,
)
DEVICES = ("/dev/zero", "/dev/stdin", FOLDER)
ANY = (-math.inf, math.inf)  # a number only has to be finite
TOKEN = "a-token-long-enough-to-mask-1234"


class Started(Exception):
    """Raised where the program would start serving or simulating: the value was taken."""


def _stop(*_args: Any, **_kwargs: Any) -> Any:
    raise Started


@dataclasses.dataclass
class Outcome:
    code: int | str | None
    err: str
    taken: dict[str, Any]


def _outcome(call: Callable[[list[str]], Any], argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """``call(argv)``: what it returned, or its exit code; "started" when it got to the start; its stderr; the values
    it parsed when ``call`` returns them."""
    taken: dict[str, Any] = {}
    try:
        result = call(argv)
        code: int | str | None = 0 if isinstance(result, dict) else result
        taken = result if isinstance(result, dict) else {}
    except Started:
        code = "started"
    except SystemExit as exit_:
        code = exit_.code
    return Outcome(code, capsys.readouterr().err, taken)


def _without_usage(err: str) -> str:
    """stderr without argparse's usage lines: they name every option, so the error itself must name the one at fault
    (with the simulator's usage spelt out, --trace nan passed on "No such file or directory: 'nan'")."""
    kept, in_usage = [], False
    for line in err.splitlines():
        in_usage = line.startswith("usage:") or (in_usage and line.startswith(" "))
        if not in_usage:
            kept.append(line)
    return "\n".join(kept)


def _problems(
    call: Callable[[list[str]], Any],
    options: dict[str, tuple[float, float] | None],
    capsys: pytest.CaptureFixture[str],
    folder: Path,
    *,
    before: Sequence[str] = (),
    blank_is_unset: Sequence[str] = (),
    devices_refused: Sequence[str] = (),
    taken_as: Callable[[str, dict[str, Any]], Any] | None = None,
    named_as: dict[str, str] | None = None,
    any_script_digits: bool = False,
) -> list[str]:
    """Every hostile value for every option in ``options`` (option -> the range a number it takes must lie in, or
    None for no number): what breaks the rule, one line each. ``before``: arguments that go first;
    ``blank_is_unset``: options for which "" and " " mean "not given" (documented so); ``devices_refused``: file
    options for which a device or a folder is no file; ``named_as``: the words an error names an option by, other than
    the option itself (and its field's name: tick_s, "participants file"); ``any_script_digits``: a number may be
    written in any script's digits (Arabic-Indic 12), as ComfyUI's own options take it (the stand-in's), where the
    environment's settings (pydantic) and every other command line take ASCII digits only."""
    found = []
    for option, bounds in options.items():
        for value in HOSTILE:
            value = str(folder) if value == FOLDER else value
            shown = f"{option} {value[:20]!r}"
            outcome = _outcome(call, [*before, option, value], capsys)
            name = option.removeprefix("--").replace("-", "_")
            fields = (name, name.replace("_", " ")) if "_" in name else ()
            fields += ((named_as or {})[option],) if option in (named_as or {}) else ()
            if outcome.code in (0, "started"):
                if not value.strip() and option not in blank_is_unset:
                    found.append(f"{shown}: a blank value taken")
                if value in (*DEVICES, str(folder)) and option in devices_refused:
                    found.append(f"{shown}: no file, taken")
                if bounds is not None and not value.isascii() and not any_script_digits:
                    found.append(f"{shown}: a number in other than ASCII digits taken")
                number = taken_as(name, outcome.taken) if taken_as else outcome.taken.get(name)
                if bounds is not None and isinstance(number, int | float):
                    low, high = bounds
                    if not (math.isfinite(number) and low <= number <= high):
                        found.append(f"{shown}: taken as {number!r}, outside {low:g}-{high:g}")
            elif outcome.code != 2:
                found.append(f"{shown}: exit {outcome.code!r}: {outcome.err[-300:]!r}")
            elif "Traceback" in outcome.err:
                found.append(f"{shown}: a traceback")
            elif not any(word in _without_usage(outcome.err) for word in (option, *fields)):
                found.append(f"{shown}: stderr does not name the option: {outcome.err[-300:]!r}")
    return found


# --- comfy-scaler ---------------------------------------------------------------------------------------------


def test_comfy_scaler_refuses_any_command_it_does_not_have_and_any_value_given_to_a_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Its own commands take flags only: a value after one, or an unknown command, is refused before anything is
    read (the environment included)."""
    for value in HOSTILE:
        outcome = _outcome(scaler_cli.main, [value], capsys)
        assert outcome.code == 2 and "COMMAND" in outcome.err and "Traceback" not in outcome.err, repr(value[:20])
        for argv in (["status", "--json", value], ["stop", "--all", value], ["run", "--dry-run", value]):
            outcome = _outcome(scaler_cli.main, argv, capsys)
            assert outcome.code == 2 and "unrecognized arguments" in outcome.err, argv[:2]


SIMULATE_NUMBERS = {
    "--seed": ANY, "--price-per-hour": ANY, "--cold-start-s": ANY, "--health-check-delay-s": ANY, "--tick-s": ANY,
    "--spot-reclaims-per-hour": ANY, "--max-shutdown-handbacks": ANY,
    **{"--" + field.name.replace("_", "-"): ANY for field in dataclasses.fields(ScalingConfig)
       if not isinstance(field.default, bool) and field.name not in ("billing_anchor", "timetable")},
}
SIMULATE_OTHERS = {
    "--seeds": None, "--trace": None, "--json": None, "--chart": None, "--policy": None, "--workload": None,
    "--verda-billing-anchor": None, "--scale-down-victim": None, "--timetable": None, "--billing-anchor": None,
}


def test_simulate_refuses_each_bad_value_naming_its_option_before_simulating(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every value is checked before the first run (a workshop's five seeds take minutes): a run is where a value
    was taken, its config and platform model recorded."""
    monkeypatch.chdir(tmp_path)
    taken: dict[str, Any] = {}

    def record(workload: Any, policy: str, config: ScalingConfig, platform: Any, seed: int, *_: Any) -> Any:
        taken.update(dataclasses.asdict(config), **dataclasses.asdict(platform), seed=seed)
        raise Started

    monkeypatch.setattr(simulate_cli, "run_policy", record)

    def simulate(argv: list[str]) -> Any:
        taken.clear()
        return simulate_cli.simulate_main(argv)

    problems = _problems(
        simulate, {**SIMULATE_NUMBERS, **SIMULATE_OTHERS}, capsys, tmp_path,
        blank_is_unset=["--timetable"],  # no timetable: the workload's own (docs/simulator.md)
        devices_refused=["--trace"],
        taken_as=lambda name, _: taken.get(name),
    )  # fmt: skip
    assert problems == [], "\n".join(problems)


def test_simulate_refuses_seed_and_seeds_together(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--seeds took over and --seed 7 was dropped unsaid: the table showed seed 1's figures."""
    monkeypatch.setattr(simulate_cli, "run_policy", _stop)
    outcome = _outcome(simulate_cli.simulate_main, ["--seed", "7", "--seeds", "1-2"], capsys)
    assert outcome.code == 2
    assert "--seed" in outcome.err and "not allowed with" in outcome.err


def test_simulate_refuses_a_seed_range_that_would_run_for_hours(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1000 seeds were taken with the x clairv. column on (its default): 3000 clairvoyant plans, 12-27 s each."""
    monkeypatch.setattr(simulate_cli, "run_policy", _stop)
    outcome = _outcome(simulate_cli.simulate_main, ["--seeds", "1-1000"], capsys)
    assert outcome.code == 2 and "--seeds" in outcome.err and "--no-clairvoyant-ratio" in outcome.err
    without_the_column = ["--seeds", "1-1000", "--no-clairvoyant-ratio"]  # ~1 s a row: taken, as documented
    assert _outcome(simulate_cli.simulate_main, without_the_column, capsys).code == "started"


@pytest.mark.parametrize("planned", [[], ["--policy", "clairvoyant", "--no-clairvoyant-ratio"]])
def test_simulate_refuses_a_tick_too_short_to_plan_a_clairvoyant(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, planned: list[str]
) -> None:
    """--tick-s 1 is in the model's range, but a clairvoyant planned at it took minutes a row: the defaults did not
    finish one seed in 400 s. Without one, the same tick runs a workshop day in about 12 s."""
    monkeypatch.setattr(simulate_cli, "run_policy", _stop)
    outcome = _outcome(simulate_cli.simulate_main, ["--tick-s", "1", *planned], capsys)
    assert outcome.code == 2 and "--tick-s 1" in outcome.err and "--no-clairvoyant-ratio" in outcome.err
    assert _outcome(simulate_cli.simulate_main, ["--tick-s", "5", *planned], capsys).code == "started"
    assert _outcome(simulate_cli.simulate_main, ["--tick-s", "1", "--no-clairvoyant-ratio"], capsys).code == "started"


# --- the deploy -------------------------------------------------------------------------------------------------


def test_deploy_refuses_each_bad_value_naming_its_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A spec that is no file (a device would be read without end, a folder, an empty name: the folder it ran in)
    is refused before anything is sent, naming --spec; the dry run needs no network."""
    monkeypatch.chdir(tmp_path)

    def deploy(argv: list[str]) -> Any:
        return asyncio.run(deploy_command.deploy_main(argv, {}))

    for action in ("apply", "status", "delete"):
        problems = _problems(deploy, {"--spec": None, "--provider": None}, capsys, tmp_path,
                             before=[action, "--dry-run"] if action == "apply" else [action],
                             devices_refused=["--spec"])
        assert problems == [], (action, "\n".join(problems))
        # A 100,000-character path was echoed twice in the refusal: now once, shortened
        outcome = _outcome(deploy, [action, "--spec", "x" * 100_000], capsys)
        assert outcome.code == 2 and "--spec 'xxx" in outcome.err and len(outcome.err) < 1_000, outcome.err[:300]


# --- the queue manager --------------------------------------------------------------------------------------------


QUEUE_OPTIONS = {
    "--host": None, "--port": (0, 65535), "--db": None, "--max-queue-depth": (0, math.inf),
    "--job-timeout": (math.ulp(0), math.inf), "--reaper-interval": (math.ulp(0), math.inf), "--mode": None,
    "--token": None, "--worker-token": None, "--outputs-dir": None,
}


def test_queue_manager_refuses_each_bad_value_naming_its_option_before_serving(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Checked up to the database's lock, the first thing it writes: the values it would serve with are taken."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(queue_cli, "lock_database", _stop)

    def serve(argv: list[str]) -> Any:
        try:
            return queue_cli.main(argv)
        except Started:
            return vars(queue_cli.build_parser().parse_args(argv))

    problems = _problems(serve, {k: v for k, v in QUEUE_OPTIONS.items() if k != "--db"}, capsys, tmp_path,
                         before=["--db", str(tmp_path / "q.db")])
    problems += _problems(serve, {"--db": None}, capsys, tmp_path, devices_refused=["--db"])
    # A device or a folder as the participants file was refused only when the start read it, the lock written
    problems += _problems(serve, {"--participants-file": None}, capsys, tmp_path, before=["--token", TOKEN],
                          devices_refused=["--participants-file"])
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("command", [queue_cli.ADD_PARTICIPANT, queue_cli.REMOVE_PARTICIPANT])
def test_participant_commands_refuse_each_bad_file_naming_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, command: str
) -> None:
    """A blank name wrote a file named " " (or read the folder it ran in); a device or a folder is no file."""
    monkeypatch.chdir(tmp_path)
    problems = _problems(
        lambda argv: queue_cli.main([command, *argv]), {"--participants-file": None}, capsys, tmp_path,
        before=["alice"], devices_refused=["--participants-file"],
    )  # fmt: skip
    # remove-participant exits 1 for a file without alice's line: the file was taken
    assert [p for p in problems if not (command == queue_cli.REMOVE_PARTICIPANT and ": exit 1:" in p)] == []


# --- comfy-serverless demo ------------------------------------------------------------------------------------------


DEMO_OPTIONS = {
    "--jobs": (1, demo_cli.MAX_JOBS), "--users": (1, demo_cli.MAX_USERS), "--bad-jobs": (0, demo_cli.MAX_JOBS),
    "--max-replicas": (1, MAX_REPLICAS_LIMIT), "--workload": None, "--comfyui-url": None,
    "--node-seconds": (0, demo_cli.HOUR_S), "--spread-s": (0, demo_cli.DAY_S),
    "--price-per-hour": (0, demo_cli.MAX_PRICE_PER_HOUR), "--output-dir": None, "--db": None,
    "--idle-to-zero-s": (0, demo_cli.DAY_S), "--target-wait-s": (1, demo_cli.DAY_S), "--timeout-s": (1, demo_cli.DAY_S),
    "--providers": None, "--fail": None,
}


def test_demo_refuses_each_bad_value_naming_its_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    problems = _problems(lambda argv: vars(demo_cli.parse_demo_args(argv)), DEMO_OPTIONS, capsys, tmp_path,
                         devices_refused=["--db"])
    assert problems == [], "\n".join(problems)


def test_demo_writes_nothing_when_a_later_option_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--output-dir's folders and --db's database were created while the options were read, and stayed when the
    next option was refused."""
    monkeypatch.chdir(tmp_path)
    outcome = _outcome(demo_cli.parse_demo_args, ["--output-dir", "out", "--db", "jobs.db", "--jobs", "0"], capsys)
    assert outcome.code == 2 and "--jobs" in _without_usage(outcome.err)
    assert os.listdir(tmp_path) == []


def test_demo_removes_what_it_created_when_an_option_that_writes_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--db's database, created before --output-dir was refused, stayed; so did the outputs folder made before the
    logs folder was refused."""
    monkeypatch.chdir(tmp_path)
    Path("a-file").write_text("")
    outcome = _outcome(demo_cli.parse_demo_args, ["--db", "jobs.db", "--output-dir", "a-file/out"], capsys)
    assert outcome.code == 2 and "--output-dir" in _without_usage(outcome.err)
    assert os.listdir(tmp_path) == ["a-file"]
    Path("out").mkdir()
    Path("out", "logs").write_text("")  # a file where the logs folder goes
    outcome = _outcome(demo_cli.parse_demo_args, ["--db", "jobs.db", "--output-dir", "out"], capsys)
    assert outcome.code == 2 and "--output-dir" in _without_usage(outcome.err)
    assert (sorted(os.listdir(tmp_path)), os.listdir("out")) == (["a-file", "out"], ["logs"])


def test_provider_outage_command_refuses_each_bad_value_naming_its_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """python -m scaler.simulator.providers read --seed and the hours with bare int()/float(): an Arabic-Indic 12
    was taken as seed 12, where every other command line takes ASCII digits only."""

    taken: dict[str, Any] = {}

    def record(seed: int, outage_start_h: float, outage_h: float) -> Any:
        taken.update(seed=seed, outage_start_h=outage_start_h, outage_h=outage_h)
        raise Started

    monkeypatch.setattr(simulator_providers, "outage_day", record)

    def run(argv: list[str]) -> Any:
        taken.clear()
        return simulator_providers.main(argv)

    problems = _problems(
        run, {"--seed": ANY, "--outage-start-h": (0, 24), "--outage-h": (0, 24)}, capsys, tmp_path,
        taken_as=lambda name, _: taken.get(name),
    )  # fmt: skip
    assert problems == [], "\n".join(problems)


# --- the ComfyUI stand-in -------------------------------------------------------------------------------------------


def test_comfyui_simulator_refuses_each_bad_value_naming_its_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A port out of range, a size or a delay that is nan or negative ended its start in a traceback (or served
    with a history that never came); a blank --listen bound every interface. Its path options, as ComfyUI's, take
    any name."""
    monkeypatch.chdir(tmp_path)
    seconds = (0, math.inf)
    problems = _problems(
        lambda argv: vars(comfyui_sim._parse_args(argv)),
        {"--listen": None, "--port": (0, 65535), "--max-upload-size": seconds, "--default-node-seconds": seconds,
         "--history-lag": seconds, "--startup-delay": seconds},
        capsys, tmp_path, any_script_digits=True,
    )  # fmt: skip
    for value in HOSTILE:
        outcome = _outcome(lambda argv: vars(comfyui_sim._parse_args(argv)), ["--node-seconds", f"KSampler={value}"],
                           capsys)
        number = outcome.taken.get("node_seconds", {}).get("KSampler")
        if outcome.code != 2 and not (isinstance(number, float) and math.isfinite(number) and number >= 0):
            problems.append(f"--node-seconds KSampler={value[:20]!r}: taken as {number!r}")
    assert problems == [], "\n".join(problems)


# --- the worker and the supervisor --------------------------------------------------------------------------------


@pytest.mark.parametrize("main", [worker_cli.main, supervisor_cli.main])
def test_worker_and_supervisor_refuse_any_argument(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, main: Callable[[], int]
) -> None:
    for value in HOSTILE:
        monkeypatch.setattr(sys, "argv", ["prog", value])
        assert main() == 2, repr(value[:20])
        assert "takes no arguments" in capsys.readouterr().err


# --- as a shell sees them ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "args", "named"),
    [
        ("scaler.cli", ["simulate", "--tick-s", "nan"], "tick_s"),
        ("scaler.simulator", ["--trace", ""], "--trace"),
        ("scaler.deploy", ["--spec", ""], "--spec"),
        ("queue_manager", ["--port", "70000"], "--port"),
        ("demo", ["demo", "--jobs", "0"], "--jobs"),
        ("standins.comfyui", ["--port", "70000"], "--port"),
        ("worker", ["--queue-url", "x"], "--queue-url"),
        ("supervisor", ["bash"], "bash"),
    ],
)
async def test_each_program_exits_2_naming_the_option_without_a_traceback(
    tmp_path: Path, module: str, args: list[str], named: str
) -> None:
    code, err = await run_module_to_exit(module, *args, env={**os.environ}, cwd=tmp_path, timeout_s=30)
    assert (code, "Traceback" in err) == (2, False), err[-2000:]
    assert named in err
    assert os.listdir(tmp_path) == []
