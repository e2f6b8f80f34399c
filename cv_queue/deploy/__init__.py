"""Pieces of the production deployment that are code: the run launcher the production instance names."""
