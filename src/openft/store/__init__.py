"""Persistence: SQLAlchemy tables and stores, blob storage, Alembic migrations."""
