"""Persistence: SQLAlchemy Core over an async driver (SQLite by default), with migrations."""
