#!/usr/bin/env bash
# The README's first command: install the pinned requirements, then run the end-to-end CPU demo
# (synthetic data -> folds -> row selection -> 9 configs x 4 folds -> blend -> submission -> KL table).
#
#   bash run_demo.sh [demo.py options, e.g. --workers 2 --work-dir demo]
#   SKIP_INSTALL=1 bash run_demo.sh      # requirements already installed
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
start=$SECONDS
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  echo "=== installing requirements.txt"
  "$PYTHON" -m pip install -q -r requirements.txt
  echo "    install took $((SECONDS - start)) s"
fi
"$PYTHON" scripts/demo.py "$@"
echo "run_demo.sh: $((SECONDS - start)) s wall time, install included"
