#!/usr/bin/env bash
# Deploy the worker to Verda serverless containers from verda/deployment.toml.
#   ./deploy-serverless.sh --dry-run     print the exact JSON body, touch nothing
#   ./deploy-serverless.sh               create or update the deployment, then print status and replicas
#   ./deploy-serverless.sh status | delete --yes
#   ./deploy-serverless.sh --provider runpod [--dry-run | status | delete --yes]   RunPod pods (docs/providers.md)
# All logic lives in scaler/deploy/ (command.py dispatches, verda.py deploys); see docs/deploy-verda.md.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=python3
if [ -x .venv/bin/python ]; then
  PYTHON=.venv/bin/python
fi
exec "$PYTHON" -m scaler.deploy "$@"
