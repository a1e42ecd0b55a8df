"""Spend-ledger saves that failed within the last ten minutes, held back from the log, are counted when the scaler
stops, as the policy state's are (test_save_failures_at_stop.py)."""

from __future__ import annotations

from structlog.testing import capture_logs

from standins.runpod import FakeRunPod

HELD_BACK = "cost_ledger_save_failed_held_back"


async def test_failed_ledger_saves_held_back_are_counted_at_a_stop(make_fleet, fake_runpod: FakeRunPod, tmp_path):
    """Before: 3 failed saves, then the stop's own save (failing too), logged the first failure only; the other 3
    were counted nowhere."""
    (tmp_path / "a-file").write_text("")
    fleet = make_fleet(fake_runpod, verda_price=2.30, runpod_price=2.99,
                       ledger_file=tmp_path / "a-file" / "ledger.json")  # a full disk fails the same way
    try:
        with capture_logs() as logs:
            for _ in range(3):
                await fleet.observe()
            fleet.record_stopped()  # what `comfy-scaler run` does once its loop stopped
    finally:
        await fleet.aclose()
    failed = [(entry["event"], entry["more_since_last"]) for entry in logs
              if entry["event"].startswith("cost_ledger_save_failed")]
    assert failed == [("cost_ledger_save_failed", 0), (HELD_BACK, 3)]
