"""Capacity planning of archetype model chains on model servers."""
