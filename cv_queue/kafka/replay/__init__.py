"""replay (docstring to come)."""
