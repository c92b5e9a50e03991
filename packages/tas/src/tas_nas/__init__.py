"""tas_nas (work in progress)."""
