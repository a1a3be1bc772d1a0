"""data: see the package docstring for the stages."""
