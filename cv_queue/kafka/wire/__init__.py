"""wire (docstring to come)."""
