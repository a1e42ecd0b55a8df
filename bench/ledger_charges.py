"""Benchmark: the cost of one `CostLedger.charge` with a full ledger (2 days of one-minute buckets, 2,880 per
provider, for 3 providers), as a running fleet makes one per provider per tick.

    ./dev python -m bench.ledger_charges   (from the repository root)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from scaler.ledger import KEEP_S, RUNPOD_BILLING, VERDA_BILLING, CostLedger

T0 = 1_800_000_000.0
PROVIDERS = {"verda": VERDA_BILLING, "runpod": RUNPOD_BILLING, "other": VERDA_BILLING}


@dataclass(frozen=True)
class Replica:
    id: str
    started_at: float


def full_ledger() -> CostLedger:
    ledger = CostLedger()
    for name in PROVIDERS:
        ledger.buckets[name] = {int(T0 - KEEP_S + 60 * (n + 1)): 0.01 for n in range(int(KEEP_S // 60) - 1)}
    return ledger


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--charges", type=int, default=3000, help="ticks charged, each to every provider")
    charges = parser.parse_args(argv).charges
    ledger, replicas = full_ledger(), [Replica(f"r{n}", T0 - 3600) for n in range(3)]
    now = T0
    started = time.perf_counter()
    for _ in range(charges):
        now += 15.0
        for name, rule in PROVIDERS.items():
            ledger.charge(name, replicas, now, price_per_hour=2.0, rule=rule, elapsed_s=15.0)
    per_charge = (time.perf_counter() - started) / (charges * len(PROVIDERS))
    print(f"buckets kept: {sum(len(b) for b in ledger.buckets.values())}; one charge: {per_charge * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
