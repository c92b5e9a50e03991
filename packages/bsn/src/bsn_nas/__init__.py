"""bsn_nas (work in progress)."""
