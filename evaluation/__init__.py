"""Evaluation harness: quality and performance gates and the
acceptance scenarios, run against a dialogue server over HTTP."""
