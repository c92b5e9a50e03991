"""nat_nas (work in progress)."""
