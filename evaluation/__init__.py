"""Evaluation harness (seed 000, component 5): quality and performance gates and the
acceptance scenarios, run against a dialogue server over HTTP."""
