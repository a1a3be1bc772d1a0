#!/usr/bin/env bash
# Main job. Creates .venv when missing, installs the pinned requirements, then runs the pipeline:
# train (PRESET=auto|8gb|12gb|24gb|cpu-smoke; auto = by GPU memory, cpu-smoke without a GPU),
# predict, check the submission and score it. Further arguments go to scripts/pipeline.py, e.g.
#   PRESET=24gb bash start_training_qwen2.sh --train_data data/train.jsonl --predict_input data/Emotion_Summary.jsonl
# Set VENV=none to use the Python already active.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PRESET="${PRESET:-auto}"
VENV="${VENV:-$here/.venv}"

for arg in "$@"; do
  if [ "$arg" = "--help" ] || [ "$arg" = "-h" ]; then
    sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    echo
    if [ -x "$VENV/bin/python" ]; then py="$VENV/bin/python"; else py=python3; fi
    PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" exec "$py" "$here/scripts/pipeline.py" --help
  fi
done

if [ "$VENV" = "none" ]; then
  py=python3
else
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating virtual environment $VENV"
    python3 -m venv "$VENV"
  fi
  py="$VENV/bin/python"
fi

if ! "$py" -c "import emotion_summary, torch, transformers, peft, bitsandbytes" 2>/dev/null; then
  echo "installing requirements (torch first)"
  "$py" -m pip install -q --disable-pip-version-check torch==2.13.0
  "$py" -m pip install -q --disable-pip-version-check -r "$here/requirements_qwen2.txt"
  "$py" -m pip install -q --disable-pip-version-check --no-deps -e "$here"
fi

exec "$py" "$here/scripts/pipeline.py" --preset "$PRESET" "$@"
