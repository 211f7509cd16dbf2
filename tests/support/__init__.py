"""Helpers that several test modules share: fake activities and workflows, saga-state polling."""
