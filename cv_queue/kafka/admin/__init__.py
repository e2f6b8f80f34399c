"""admin (docstring to come)."""
