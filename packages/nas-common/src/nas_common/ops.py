"""Candidate ops by name (filled in by the ops work)."""
