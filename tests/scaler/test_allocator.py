"""The allocator: properties over random fleets and tick sequences, and the fallback round trip step by step."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scaler.allocator import (
    AllocatorConfig,
    AllocatorState,
    DegradedReason,
    MoveReason,
    ProviderSpec,
    ProviderView,
    allocate,
    fleet_rate,
)

NAMES = ("local", "verda", "runpod")

specs = st.tuples(
    *(
        st.builds(
            ProviderSpec,
            name=st.just(name),
            max_replicas=st.integers(0, 5),
            price_per_hour=st.sampled_from([0.0, 0.8, 1.5, 2.3, 2.3, 3.0]),
            commit_s=st.sampled_from([15.0, 600.0]),
        )
        for name in NAMES
    )
)
configs = st.builds(
    AllocatorConfig,
    providers=specs,
    error_ticks=st.integers(1, 3),
    start_deadline_s=st.sampled_from([60.0, 300.0]),
    retry_after_s=st.sampled_from([60.0, 300.0]),
    max_spend_per_hour=st.one_of(st.none(), st.sampled_from([2.0, 5.0, 10.0])),
    max_spend_per_day=st.one_of(st.none(), st.sampled_from([1.0, 20.0])),
)
# Per tick: desired count, busy replicas, and per provider: status, how many seconds its replicas take to be ready.
provider_ticks = st.tuples(
    st.sampled_from(["healthy", "healthy", "healthy", "quota_reached", "error", "slow"]),
    st.sampled_from([0, 15, 45]),
)
ticks = st.lists(
    st.tuples(st.integers(0, 12), st.integers(0, 6), st.tuples(*(provider_ticks for _ in NAMES))),
    min_size=1, max_size=30,
)
TICK_S = 30.0


class Platform:
    """Each provider keeps the asked-for count; a replica is ready ``delay`` s after it was asked for, or never
    while the provider is slow."""

    def __init__(self) -> None:
        self.replicas: dict[str, list[float]] = {name: [] for name in NAMES}  # per replica: when ready

    def follow(self, targets: dict[str, int], now: float, delays: dict[str, tuple[str, int]]) -> None:
        for name, target in targets.items():
            status, delay = delays[name]
            replicas = self.replicas[name]
            del replicas[target:]
            while len(replicas) < target:
                replicas.append(float("inf") if status == "slow" else now + delay)

    def view(self, name: str, now: float, status: str) -> ProviderView:
        replicas = self.replicas[name]
        live, ready = len(replicas), sum(1 for at in replicas if at <= now)
        if status == "error":
            return ProviderView(live=live, ready=ready, error="ConnectError: refused")
        return ProviderView(live=live, ready=ready, status="quota_reached" if status == "quota_reached" else "healthy")


def replay(config: AllocatorConfig, sequence, check) -> None:
    platform, state, now, spent = Platform(), AllocatorState(), 10_000.0, 0.0
    for desired, busy, per_provider in sequence:
        now += TICK_S
        statuses = dict(zip(NAMES, per_provider, strict=True))
        views = {name: platform.view(name, now, statuses[name][0]) for name in NAMES}
        busy = min(busy, sum(v.ready for v in views.values()))
        allocation = allocate(config, state, desired, views, now, busy=busy, spent_last_day=spent)
        check(config, state, allocation, desired, busy, views, spent)
        spent += sum(max(0, allocation.targets[p.name] - state.targets.get(p.name, 0)) * p.commit_cost
                     for p in config.providers)
        platform.follow(allocation.targets, now, statuses)
        state = allocation.new_state


@settings(max_examples=300, deadline=None)
@given(configs, ticks)
def test_never_above_any_providers_max_and_above_the_need_only_while_draining(config, sequence):
    def check(config, state, allocation, desired, busy, views, spent):
        for spec in config.providers:
            assert 0 <= allocation.targets[spec.name] <= spec.max_replicas, spec
        # More than needed only while drained replicas wait for replacements that are not ready yet, or while a
        # provider cannot be read (what it may still run is neither counted nor cut).
        coming_up = sum(max(0, allocation.targets[n] - views[n].ready) for n in views)
        unreadable = sum(allocation.targets[n] for n, h in allocation.new_state.health.items()
                         if h.degraded is DegradedReason.ERRORS)
        assert sum(allocation.targets.values()) - max(desired, busy) <= coming_up + unreadable

    replay(config, sequence, check)


@settings(max_examples=300, deadline=None)
@given(configs, ticks)
def test_never_above_the_budget(config, sequence):
    def check(config, state, allocation, desired, busy, views, spent):
        before = {p.name: state.targets.get(p.name, 0) for p in config.providers}
        if config.max_spend_per_hour is not None:
            assert fleet_rate(config, allocation.targets) <= max(
                config.max_spend_per_hour, fleet_rate(config, before)) + 1e-9
        if config.max_spend_per_day is not None:
            new = sum(max(0, allocation.targets[p.name] - before[p.name]) * p.commit_cost for p in config.providers)
            assert new <= max(0.0, config.max_spend_per_day - spent) + 1e-9

    replay(config, sequence, check)


@settings(max_examples=300, deadline=None)
@given(configs, ticks)
def test_fallback_only_while_a_cheaper_provider_is_degraded(config, sequence):
    def check(config, state, allocation, desired, busy, views, spent):
        order = config.preference
        health = allocation.new_state.health
        for i, spec in enumerate(order):
            grew = allocation.targets[spec.name] > state.targets.get(spec.name, 0)
            if not grew:
                continue
            for cheaper in order[:i]:
                full = allocation.targets[cheaper.name] >= cheaper.max_replicas
                assert full or health[cheaper.name].degraded is not None, (spec.name, cheaper.name)
        if all(h.degraded is None for h in health.values()):
            assert not allocation.fallback_engaged
            assert not any(m.reason is MoveReason.FALLBACK for m in allocation.moves)

    replay(config, sequence, check)


@settings(max_examples=300, deadline=None)
@given(configs, ticks)
def test_moving_back_drains_never_cuts_ready_capacity_below_the_need(config, sequence):
    def check(config, state, allocation, desired, busy, views, spent):
        health = allocation.new_state.health
        usable = {n: v.ready for n, v in views.items()
                  if health[n].degraded is not DegradedReason.PAUSED}
        before = {n: min(state.targets.get(n, views[n].live), usable.get(n, 0)) for n in views}
        after = {n: min(allocation.targets[n], usable.get(n, 0)) for n in views}
        need = max(desired, busy)
        assert sum(after.values()) >= min(need, sum(before.values()))
        for move in allocation.moves:
            if move.reason is MoveReason.DRAIN:
                assert move.after < move.before

    replay(config, sequence, check)


# --- the round trip, tick by tick ---------------------------------------------------------------------------

ROUND_TRIP = AllocatorConfig(
    providers=(
        ProviderSpec("verda", max_replicas=4, price_per_hour=2.3),
        ProviderSpec("runpod", max_replicas=4, price_per_hour=2.9, commit_s=15.0),
    ),
    error_ticks=2, start_deadline_s=300.0, retry_after_s=600.0,
)


def test_quota_on_the_primary_moves_the_shortfall_then_drains_back():
    state, now = AllocatorState(), 0.0
    views = {"verda": ProviderView(), "runpod": ProviderView()}

    step = allocate(ROUND_TRIP, state, 3, views, now)
    assert step.targets == {"verda": 3, "runpod": 0}
    assert [m.reason for m in step.moves] == [MoveReason.PLACE]

    # Verda places one, then says quota_reached: the two it cannot place go to RunPod.
    now += 30
    views = {"verda": ProviderView(live=1, ready=1, status="quota_reached"), "runpod": ProviderView()}
    step = allocate(ROUND_TRIP, step.new_state, 3, views, now)
    assert step.targets == {"verda": 1, "runpod": 2}
    assert step.fallback_engaged
    assert [(c.provider, c.degraded) for c in step.health_changes] == [("verda", DegradedReason.QUOTA_REACHED)]
    assert {m.provider: m.reason for m in step.moves} == {
        "verda": MoveReason.DEGRADED_RELEASE, "runpod": MoveReason.FALLBACK}

    # Back-off over and Verda healthy again: it is asked for 3 again, RunPod keeps its 2 while they come up.
    now += 600
    views = {"verda": ProviderView(live=1, ready=1), "runpod": ProviderView(live=2, ready=2)}
    step = allocate(ROUND_TRIP, step.new_state, 3, views, now, busy=3)
    assert step.targets == {"verda": 3, "runpod": 2}
    assert step.health_changes[0].degraded is None
    assert not step.fallback_engaged

    # One of Verda's new replicas is ready: one RunPod replica is drained, not both.
    now += 30
    views = {"verda": ProviderView(live=3, ready=2), "runpod": ProviderView(live=2, ready=2)}
    step = allocate(ROUND_TRIP, step.new_state, 3, views, now, busy=3)
    assert step.targets == {"verda": 3, "runpod": 1}
    assert [(m.provider, m.reason) for m in step.moves] == [("runpod", MoveReason.DRAIN)]

    now += 30
    views = {"verda": ProviderView(live=3, ready=3), "runpod": ProviderView(live=1, ready=1)}
    step = allocate(ROUND_TRIP, step.new_state, 3, views, now, busy=2)
    assert step.targets == {"verda": 3, "runpod": 0}


def test_errors_for_n_ticks_then_a_start_deadline_degrade_and_the_back_off_doubles():
    state, now = AllocatorState(targets={"verda": 2, "runpod": 0}), 0.0
    broken = {"verda": ProviderView(live=2, ready=2, error="ConnectError"), "runpod": ProviderView()}
    step = allocate(ROUND_TRIP, state, 2, broken, now)
    assert step.targets == {"verda": 2, "runpod": 0}, "one failed tick is not yet a degradation"
    now += 30
    step = allocate(ROUND_TRIP, step.new_state, 3, broken, now)
    assert step.health_changes[0].degraded is DegradedReason.ERRORS
    assert step.targets == {"verda": 2, "runpod": 1}, "the unreadable provider keeps its count, the rest moves"
    assert step.health_changes[0].retry_in_s == 600

    # Retried: it answers, but the replica it is asked for never becomes ready.
    now += 600
    slow = {"verda": ProviderView(live=3, ready=2), "runpod": ProviderView(live=1, ready=1)}
    step = allocate(ROUND_TRIP, step.new_state, 3, slow, now)
    assert step.targets == {"verda": 3, "runpod": 1}
    now += 30
    step = allocate(ROUND_TRIP, step.new_state, 3, slow, now)
    assert not step.health_changes, "short of the asked count, but within the start deadline"
    now += 300
    step = allocate(ROUND_TRIP, step.new_state, 3, slow, now)
    assert step.health_changes[-1].degraded is DegradedReason.START_DEADLINE
    assert step.health_changes[-1].retry_in_s == 1200, "a relapse doubles the back-off"
    assert step.targets == {"verda": 2, "runpod": 1}


def test_scale_down_takes_the_dearest_provider_first():
    state = AllocatorState(targets={"verda": 4, "runpod": 3})
    views = {"verda": ProviderView(live=4, ready=4), "runpod": ProviderView(live=3, ready=3)}
    step = allocate(ROUND_TRIP, state, 5, views, 0.0)
    assert step.targets == {"verda": 4, "runpod": 1}
    assert [(m.provider, m.reason) for m in step.moves] == [("runpod", MoveReason.SCALE_DOWN)]


def test_budget_caps_new_replicas_across_providers():
    config = AllocatorConfig(providers=ROUND_TRIP.providers, max_spend_per_hour=10.0)
    step = allocate(config, AllocatorState(), 8, {"verda": ProviderView(), "runpod": ProviderView()}, 0.0)
    # 4 x 2.3 = 9.2 on Verda; one RunPod replica more would be 12.1 > 10.
    assert step.targets == {"verda": 4, "runpod": 0}
    assert step.budget_capped == ("runpod",)
    daily = AllocatorConfig(providers=ROUND_TRIP.providers, max_spend_per_day=1.0)
    step = allocate(daily, AllocatorState(), 3, {"verda": ProviderView(), "runpod": ProviderView()}, 0.0,
                    spent_last_day=0.2)
    # One Verda replica commits 2.3 / 6 = 0.383: two fit in the 0.8 left today.
    assert step.targets == {"verda": 2, "runpod": 0}


def test_a_degraded_provider_that_may_hold_no_replica_engages_no_fallback():
    """A provider taken out of SCALER_PROVIDERS is kept at a max of 0 until it is empty; unreadable, it made
    every replica on a dearer provider a "fallback" (the fallback_engaged alert, the gauge at 1)."""
    config = AllocatorConfig((ProviderSpec("runpod", 0, 0.44), ProviderSpec("verda", 3, 2.30)), error_ticks=1)
    state = AllocatorState(targets={"runpod": 2, "verda": 2})
    views = {"runpod": ProviderView(2, 2, error="ConnectError"), "verda": ProviderView(2, 2)}
    allocation = allocate(config, state, 2, views, 0.0)
    assert allocation.new_state.health["runpod"].degraded is DegradedReason.ERRORS
    assert allocation.targets["verda"] == 2
    assert not allocation.fallback_engaged
