"""Live progress on the terminal (rich), or a log line every few seconds when no one is watching."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import structlog
from rich.console import Console
from rich.live import Live
from rich.table import Table

from demo.report import ReplicaLedger

log = structlog.get_logger()
LOG_EVERY_S = 5.0


class Progress:
    """``price_of`` a replica per hour, by its id (several providers: its provider's); by default
    ``price_per_hour``."""

    def __init__(self, price_per_hour: float, *, live: bool = True,
                 price_of: Callable[[str], float] | None = None) -> None:
        self.price_per_hour = price_per_hour
        self.price_of = price_of
        self.console = Console(stderr=True)
        self._live = Live(console=self.console, refresh_per_second=4) if live and sys.stderr.isatty() else None
        self._last_log = 0.0

    def __enter__(self) -> Progress:
        if self._live:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._live.__exit__(*exc)

    def update(self, counts: dict[str, int], replicas: int, starts: int, elapsed_s: float, ledger: ReplicaLedger):
        spend = ledger.cost(self.price_of or (lambda _: self.price_per_hour))
        row = {
            "elapsed": f"{elapsed_s:5.0f} s",
            "pending": counts.get("pending", 0),
            "running": counts.get("running", 0),
            "completed": counts.get("completed", 0),
            "failed": counts.get("failed", 0),
            "replicas": replicas,
            "replica starts": starts,
            "spend": f"${spend:.3f}",
        }
        if self._live:
            prices = "each provider's price" if self.price_of else f"${self.price_per_hour:.2f}/GPU-hour"
            table = Table(title=f"ComfyUI serverless demo (at {prices})")
            for name in row:
                table.add_column(name, justify="right")
            table.add_row(*(str(value) for value in row.values()))
            self._live.update(table)
        elif time.monotonic() - self._last_log >= LOG_EVERY_S:
            self._last_log = time.monotonic()
            log.info("Demo progress", **{key.replace(" ", "_"): value for key, value in row.items()})
