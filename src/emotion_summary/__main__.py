"""`python -m emotion_summary COMMAND ...` is `es COMMAND ...`."""

from emotion_summary.commands import main

main()
