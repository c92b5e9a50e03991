"""Subcommands of the `nas` command, one module each."""
