"""The short token lifetimes counted since the hour's warning are logged when the client closes: the hour's end they
waited for rarely comes before the process exits."""

from __future__ import annotations

from structlog.testing import capture_logs

from scaler.providers.verda.client import VerdaClient
from standins.verda import FakeVerda


async def test_short_token_lifetimes_held_back_are_counted_when_the_client_closes(
    fake: FakeVerda, verda: VerdaClient
) -> None:
    """Before: 3 short tokens, then aclose(), logged 1 of 3 (more_since_last=0), the other 2 nowhere (now 3 of 3)."""
    fake.token_ttl_s = 30
    with capture_logs() as logs:
        await verda.list_deployments()
        for _ in range(2):
            fake.expire_tokens()  # refused: renewed at once, as short
            await verda.list_deployments()
        await verda.aclose()
    assert [entry["more_since_last"] for entry in logs if entry["event"] == "verda_token_lifetime_short"] == [0]
    [held_back] = [entry for entry in logs if entry["event"] == "verda_token_lifetime_short_held_back"]
    assert (held_back["more_since_last"], held_back["log_level"]) == (2, "warning")
