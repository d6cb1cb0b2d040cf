"""Alembic migrations of the one schema both services use; `python -m shared.migrate` applies them."""
