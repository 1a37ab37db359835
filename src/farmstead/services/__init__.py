"""Use cases and background loops. Services own the transaction."""
