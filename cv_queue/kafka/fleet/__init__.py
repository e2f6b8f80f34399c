"""fleet (docstring to come)."""
