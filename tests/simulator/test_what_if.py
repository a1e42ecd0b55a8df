"""Simulation.what_if: a copy taken at a tick plays on exactly as the simulation itself would, and nothing done to
the copy reaches the original (bench/rollout_oracle.py relies on both)."""

from __future__ import annotations

from dataclasses import dataclass, field

from scaler.policy import Replica
from scaler.simulator.platform import PlatformModel, Simulation
from scaler.simulator.policies import AlwaysOn, Controller, QueueView, WorkerModel
from scaler.simulator.workloads import JobSpec, Workload

ASKED_AT = 600.0
WORKLOAD = Workload("three jobs", (JobSpec(30.0, 100.0), JobSpec(650.0, 300.0), JobSpec(700.0, 300.0)), 3600.0)


@dataclass
class Stepped:
    """Two replicas, one from minute 20; at minute 10 it asks what if the count were ``what_if`` there, with
    ``then`` deciding from the next tick on."""

    what_if: int | None = None
    then: Controller | None = None
    simulation: Simulation | None = None
    copy: Simulation | None = None
    worker: WorkerModel = field(default_factory=WorkerModel)
    name: str = "stepped"

    def target(self, now: float, queue: QueueView, replicas: tuple[Replica, ...]) -> int:
        count = 2 if now < 1200 else 1
        if now == ASKED_AT and self.what_if is not None and self.simulation is not None:
            self.copy = self.simulation.what_if(now, self.what_if, self.then or Stepped())
        return count


def run(what_if: int | None = None, then: Controller | None = None) -> tuple[Simulation, Stepped]:
    controller = Stepped(what_if, then)
    simulation = Simulation(WORKLOAD, controller, PlatformModel())
    controller.simulation = simulation
    simulation.run()
    return simulation, controller


def finishes(simulation: Simulation) -> list[float | None]:
    return [job.finished_s for job in simulation.outcome.jobs]


def test_a_copy_with_the_same_count_plays_on_as_the_simulation_does():
    simulation, controller = run(what_if=2)
    copy = controller.copy
    assert copy is not None
    copy.advance(WORKLOAD.horizon_s)
    assert None not in finishes(simulation)
    assert finishes(copy) == finishes(simulation)
    assert [r.started_at for r in copy.outcome.replicas] == [r.started_at for r in simulation.outcome.replicas]
    assert copy.outcome.samples == [sample for sample in simulation.outcome.samples if sample.t > ASKED_AT]


def test_what_the_copy_does_never_reaches_the_simulation():
    alone, _ = run()
    simulation, controller = run(what_if=0, then=AlwaysOn(0))
    copy = controller.copy
    assert copy is not None
    copy.advance(WORKLOAD.horizon_s)
    # No replica from minute 10 on: the copy finishes neither later job; the original is untouched.
    assert finishes(copy)[1:] == [None, None]
    assert [job.submit_s for job in copy.queued] == [650.0, 700.0]
    assert finishes(simulation) == finishes(alone)
    assert simulation.outcome.billed_intervals == alone.outcome.billed_intervals
    assert simulation.outcome.samples == alone.outcome.samples
