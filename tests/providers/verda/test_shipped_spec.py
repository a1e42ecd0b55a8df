"""The shipped verda/deployment.toml agrees with the scaler that drives it (docs/scaler.md, "Workers and the
scaler": the scaler's scale-down, not a worker's idle exit, ends a replica)."""

from __future__ import annotations

from scaler.config import DEFAULTS
from scaler.deploy.spec import DEFAULT_SPEC_PATH, load_spec
from worker.config import WorkerSettings

EXAMPLE_ENV = {
    "VERDA_IMAGE": "ghcr.io/acme/comfyui-worker-serverless:0.1.0",
    "VERDA_MODELS_VOLUME_ID": "models-volume",
    "VERDA_OUTPUTS_VOLUME_ID": "outputs-volume",
    "QUEUE_MANAGER_URL": "https://queue.example.com",
}


def test_the_shipped_idle_exit_leaves_ending_a_replica_to_the_scaler():
    """0 (no idle exit), or an idle exit longer than the 600 s (its billing boundary) the scaler keeps an unneeded
    replica. Before: 10 idle polls of 2 s, an idle worker exited after 18 s while the scaler kept its replica:
    Verda restarted it cold, models reloaded and billed, at every quiet spell."""
    env = load_spec(DEFAULT_SPEC_PATH, EXAMPLE_ENV).env
    polls = int(env["SERVERLESS_MAX_IDLE_POLLS"])
    if polls == 0:  # never: the scaler decides when a replica goes
        return
    interval_s = float(env.get("WORKER_POLL_INTERVAL", WorkerSettings.model_fields["poll_interval_s"].default))
    idle_exit_s = (polls - 1) * interval_s  # it exits at its last idle poll: one sleep fewer than polls
    assert idle_exit_s > DEFAULTS.billing_interval_s, (idle_exit_s, DEFAULTS.billing_interval_s)
