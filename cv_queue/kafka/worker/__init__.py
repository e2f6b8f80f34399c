"""worker (docstring to come)."""
