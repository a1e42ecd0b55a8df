"""What the deploy makes of Verda's list of serverless computes (GET /serverless-compute-resources)."""

from __future__ import annotations

from scaler.deploy.command import deploy_main
from standins.verda import FakeVerda

COMPUTE_LIST = "/serverless-compute-resources"


async def test_an_empty_compute_list_says_verda_lists_none_and_what_to_check(fake: FakeVerda, deploy_env, capsys):
    """Before: "VERDA_COMPUTE: Verda offers no compute 'H100'; the names it offers: " with nothing after it. Now it
    says Verda lists no compute for serverless containers and what to check; nothing is written."""
    fake.fail_next(COMPUTE_LIST, 200, method="GET", body=[])
    assert await deploy_main([], {**deploy_env, "VERDA_COMPUTE": "H100"}) == 1
    err = capsys.readouterr().err
    assert "VERDA_COMPUTE: Verda lists no compute for serverless containers" in err
    assert "the account can run serverless containers" in err
    assert "the names it offers" not in err
    assert fake.secrets == {} and fake.deployments == {}
