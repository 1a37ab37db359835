"""The worker-node side: an HTTP client of the server and the runner of one task instance.

Talks HTTP only: imports farmstead.fsm and farmstead.schemas, never the server's layers.
"""
