"""client (docstring to come)."""
