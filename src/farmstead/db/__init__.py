"""SQLAlchemy models, engine and column types."""
