"""Domain logic: worlds, session notes, entity creation, composite documents, the vector
index, the nearline (Redis) tier and world simulation. Plain functions, callable without
Celery."""
