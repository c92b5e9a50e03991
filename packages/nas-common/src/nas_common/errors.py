"""Errors a user can act on.

Every message says what is wrong and how to fix it. The `nas` command prints a `NASError` on one line
and exits with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class NASError(Exception):
    """Base class of the errors caused by user input (paths, files, configs, budgets)."""


class ConfigError(NASError, ValueError):
    """A config value, preset, override or command-line option is invalid."""


class ArchFileError(NASError, ValueError):
    """An architecture file (arch.json) is missing, malformed, or names an unknown op/space."""


class DataError(NASError, ValueError):
    """A dataset cannot be found or loaded, or its arrays have the wrong keys or shapes."""


class BudgetError(NASError, ValueError):
    """A cost budget is infeasible, or a derived architecture is over its budget."""


class RunError(NASError, RuntimeError):
    """A run directory is in a state that forbids the requested action (exists, mismatched, diverged)."""


class RegistryError(NASError, KeyError):
    """A name is not registered (or is registered twice)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""
