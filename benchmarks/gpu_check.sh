#!/usr/bin/env bash
# The GPU proof (issue 19) on a machine that reaches no package registry: install the wheels carried in .gpu/wheels
# (what that machine lacks: pydantic, mlflow-skinny, ...; python benchmarks/gpu_prepare.py downloads them), then run
# benchmarks/gpu_check.py. Usage: bash benchmarks/gpu_check.sh OUT [--device cpu] [--quick] [gpu_check.py options]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu_check.sh OUT [gpu_check.py options]}
shift
export MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 GX_ANALYTICS_ENABLED=false
py=${PYTHON:-python3}
if ls .gpu/wheels/*.whl >/dev/null 2>&1 && [ -z "${LUNGXRAY_NO_WHEELS:-}" ]; then
  site=${TMPDIR:-/tmp}/lungxray-gpu-site
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .gpu/wheels/*.whl \
    || { echo "could not install the wheels of .gpu/wheels" >&2; exit 2; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" benchmarks/gpu_check.py --out "$out" "$@"
