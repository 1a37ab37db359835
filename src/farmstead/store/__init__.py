"""SQL: the only place that builds queries. Returns plain objects and never commits."""
