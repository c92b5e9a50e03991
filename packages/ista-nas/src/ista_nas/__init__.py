"""ista_nas (work in progress)."""
