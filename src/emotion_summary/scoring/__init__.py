"""scoring: see the package docstring for the stages."""
