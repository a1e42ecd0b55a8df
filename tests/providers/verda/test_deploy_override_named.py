"""A spec value refused after a deploy variable overrode it names that variable: the spec file may hold a good one."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaler.deploy.spec import SpecError, load_spec


def problems_for(spec_path: Path, env: dict[str, str]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(spec_path, env)
    return caught.value.problems


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"VERDA_IS_SPOT": "ture"}, "deployment.is_spot"),  # the spec says is_spot = false
        ({"VERDA_IS_SPOT": "yes please"}, "deployment.is_spot"),
        ({"VERDA_IMAGE": "ghcr.io/acme/worker:latest"}, "deployment.image"),
        ({"VERDA_DEPLOYMENT_NAME": "Comfy_Worker"}, "deployment.name"),
        ({"VERDA_COMPUTE": " H100"}, "compute.name"),
        ({"VERDA_COMPUTE_SIZE": "17"}, "compute.size"),
    ],
)
def test_a_refused_override_names_its_variable(spec_path: Path, deploy_env, override, field) -> None:
    """Before: `deployment.is_spot: Input should be a valid boolean, unable to interpret input`, no word of the
    variable, beside a spec file that reads `is_spot = false`."""
    [variable] = override
    problems = problems_for(spec_path, {**deploy_env, **override})

    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{field}: "), problems
    assert problems[0].endswith(f" (from {variable})"), problems


def test_a_value_of_the_spec_file_names_no_variable(spec_path: Path, deploy_env, tmp_path: Path) -> None:
    spec = tmp_path / "deployment.toml"
    spec.write_text(spec_path.read_text().replace("is_spot = false", 'is_spot = "ture"', 1))

    problems = problems_for(spec, deploy_env)

    assert [p.split(":")[0] for p in problems] == ["deployment.is_spot"]
    assert "(from" not in problems[0]
