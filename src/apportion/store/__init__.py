"""Persistence: SQLAlchemy Core over an async driver (SQLite by default), with migrations.

The only package that speaks SQL: ``db`` (the connection and its two write paths), ``schema``
and ``migrations``, ``committer`` (the one group-committing writer), ``upsert`` (the one
dialect-specific statement) and ``repos/`` (a repository per table family, in row dataclasses).
"""
