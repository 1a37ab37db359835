"""The HTTP layer: FastAPI app, routers, dependencies and error handlers."""
