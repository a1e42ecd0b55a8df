"""The QUEUE_MANAGER_URL checks every provider's deploy makes (Verda, RunPod) before anything is sent: a URL no
replica could reach its queue manager at, or would send its credentials to in clear."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from common.urls import IN_CLEAR, credentials_in_clear, names_this_machine
from scaler.deploy.spec import DeploymentSpec, env_section


def _queue_url(spec: DeploymentSpec, environ: Mapping[str, str]) -> tuple[str, str]:
    """(the field QUEUE_MANAGER_URL is given in, the value the replicas get): "" when unknown here (a Verda secret
    that already exists)."""
    if "QUEUE_MANAGER_URL" in spec.secrets:
        return "secrets.QUEUE_MANAGER_URL", environ.get("QUEUE_MANAGER_URL", "")
    container = {**spec.env, **spec.resolved_env}
    return f"{env_section(spec, 'QUEUE_MANAGER_URL')}.QUEUE_MANAGER_URL", container.get("QUEUE_MANAGER_URL", "")


def _path(url: str) -> str:
    try:
        return urlsplit(url).path
    except ValueError:
        return ""


def queue_url_problems(spec: DeploymentSpec, environ: Mapping[str, str]) -> list[str]:
    """On Verda and RunPod, a QUEUE_MANAGER_URL no replica can reach its queue manager at: its own loopback (the queue
    manager's default, from a shared env file), where every replica polls nothing and exits after
    SERVERLESS_MAX_UNREACHABLE_S, restarted and billed meanwhile; or one ending in /api, which every poll answers
    404 and so ends the same way; or plain http:// with a credential, sent in clear from the replicas across the
    internet."""
    where, url = _queue_url(spec, environ)
    if names_this_machine(url):
        return [f"{where}: names the replica itself (localhost, a loopback address or 0.0.0.0), where no queue "
                "manager runs: every replica would poll nothing and exit after SERVERLESS_MAX_UNREACHABLE_S (default "
                "600 s), restarted and billed meanwhile; give the queue manager's address as the replicas reach it"]
    if _path(url).rstrip("/").endswith("/api"):
        return [f"{where}: ends in /api, which the worker adds itself (/api/workers/...): every poll would be answered "
                "404 and each replica exit after SERVERLESS_MAX_UNREACHABLE_S (default 600 s); drop the /api, give "
                "the queue manager's base URL"]
    token = "QUEUE_MANAGER_TOKEN" in {**spec.env, **spec.resolved_env, **spec.secrets}
    if credentials_in_clear(url, token):
        return [f"{where}: {IN_CLEAR}: every replica would send its queue token or the URL's password across the "
                "internet unencrypted; give the queue manager's https:// URL"]
    return []
