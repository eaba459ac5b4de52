"""Process entry points: the Celery app, the dialogue server, the CLI, embedded services."""
