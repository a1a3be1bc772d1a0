"""Install the torch build that fits this machine's GPU (run by the launchers; --dry_run to preview)."""

from emotion_summary.install_torch import main

if __name__ == "__main__":
    main()
