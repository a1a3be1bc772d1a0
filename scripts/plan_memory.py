"""Will a preset fit a GPU? Simulated peak memory of the project's own training step on a named card
(no GPU needed): `python scripts/plan_memory.py --preset 12gb --seq_len 32768 [--find_max true]`."""

from emotion_summary.cli import run
from emotion_summary.gpusim.planner import plan_memory

if __name__ == "__main__":
    run(plan_memory)
