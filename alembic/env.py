"""Alembic environment: the URL comes from the caller (``memory.db.migrate``) or from
``DATABASE_URL`` via the settings; the same migrations build SQLite and PostgreSQL."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from memory.db import normalise_url
from models import Base
from settings import get_settings

config = context.config
url = config.attributes.get("database_url") or normalise_url(get_settings().sqlalchemy_url)


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, render_as_batch=True,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
