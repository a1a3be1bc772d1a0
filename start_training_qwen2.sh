#!/usr/bin/env bash
# Main job. Creates .venv when missing, installs the pinned requirements, then runs the pipeline:
# train (PRESET=auto|8gb|12gb|24gb|cpu|cpu-smoke; auto = by GPU memory, cpu without a GPU),
# predict, check the submission and score it. Further arguments go to scripts/pipeline.py, e.g.
#   PRESET=24gb bash start_training_qwen2.sh --train_data data/train.jsonl --predict_input data/longemotion/Emotion_Summary.jsonl
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

# The package first (it holds the torch installer), then the torch build that fits the GPU nvidia-smi
# shows (scripts/install_torch.py; TORCH_INDEX_URL overrides), then the rest, which keeps that torch.
if ! "$py" -c "import emotion_summary, torch, transformers, peft, bitsandbytes" 2>/dev/null; then
  echo "installing requirements (torch first)"
  "$py" -m pip install -q --disable-pip-version-check --no-deps -e "$here"
  "$py" "$here/scripts/install_torch.py"
  "$py" -m pip install -q --disable-pip-version-check -r "$here/requirements_qwen2.txt"
fi
# Stops when nvidia-smi shows a GPU that torch or bitsandbytes cannot use, with the command that fixes it.
"$py" "$here/scripts/install_torch.py" --check

exec "$py" "$here/scripts/pipeline.py" --preset "$PRESET" "$@"
