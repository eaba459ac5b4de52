"""Model access: chat models per role (generation, analysis, maintenance), embedders, and the
prompt calls the pipeline makes."""
