"""The DARTS cell space (filled in by the spaces work)."""
