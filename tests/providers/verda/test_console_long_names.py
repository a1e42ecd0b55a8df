"""`--console` keeps every name apart from its value, however long the name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scaler.deploy.command import deploy_main

LONG = "TORCH_CUDNN_V8_API_LRU_CACHE_LIMIT"  # 34 characters: a real setting of PyTorch's
LONGER = "PYTORCH_CUDA_ALLOC_CONF_FOR_THE_COMFYUI_NODES"
LONG_SECRET = "HUGGING_FACE_HUB_TOKEN_FOR_GATED_MODELS"


@pytest.mark.parametrize("name", [LONG, LONGER])
async def test_a_long_variable_name_is_printed_apart_from_its_value(
    spec_path: Path, deploy_env, tmp_path: Path, capsys, name
) -> None:
    """Before, a name of 34 characters or more ran into its value: `TORCH_CUDNN_V8_API_LRU_CACHE_LIMIT10000`,
    which an operator typing it into the console would take for the name."""
    text = spec_path.read_text()
    assert 'OUTPUTS_PATH = "/outputs"\n' in text
    text = text.replace('OUTPUTS_PATH = "/outputs"\n', f'OUTPUTS_PATH = "/outputs"\n{name} = "10000"\n')
    text = text.replace('QUEUE_MANAGER_TOKEN = "comfyui-worker-queue-manager-token"',
                        'QUEUE_MANAGER_TOKEN = "comfyui-worker-queue-manager-token"\n'
                        f'{LONG_SECRET} = "comfyui-worker-hf-token"')
    spec = tmp_path / "deployment.toml"
    spec.write_text(text)

    assert await deploy_main(["--console", "--spec", str(spec)], deploy_env) == 0

    out = capsys.readouterr().out
    assert re.search(rf"^  {name} {{2,}}10000   \(plain\)$", out, re.MULTILINE), out
    assert re.search(rf"^  {LONG_SECRET} {{2,}}secret comfyui-worker-hf-token ", out, re.MULTILINE), out
