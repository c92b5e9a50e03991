"""posterior_nas (work in progress)."""
