#!/usr/bin/env bash
# Deploy the worker to Verda serverless containers from verda/deployment.toml.
#   ./deploy-serverless.sh --dry-run     print the exact JSON body, touch nothing
#   ./deploy-serverless.sh               create or update the deployment, then print status and replicas
#   ./deploy-serverless.sh status | delete --yes
#   ./deploy-serverless.sh --provider runpod [--dry-run | status | delete --yes]   RunPod pods (docs/providers.md)
# All logic lives in scaler/deploy/ (command.py dispatches, verda.py deploys); see docs/deploy-verda.md.
set -euo pipefail
# -f: through a symbolic link to this script (one in ~/bin, on PATH), the repository is where the link points.
repo=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
# In the project's .venv, which ./dev creates on first use and updates when pyproject.toml changed (its lines go to
# stderr): the system's python3 of a fresh clone has none of the dependencies (ModuleNotFoundError: structlog).
# Run from the caller's folder, so a relative --spec is the caller's file, not one of the same name here;
# -P keeps a folder there named like one of ours (scaler/, common/) from being imported instead.
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "$repo/dev" python -P -m scaler.deploy "$@"
