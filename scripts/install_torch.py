"""Install the torch build that fits this machine's GPU (run by the launchers; --dry_run to preview)."""

from emotion_summary.commands import install_torch

if __name__ == "__main__":
    install_torch()
