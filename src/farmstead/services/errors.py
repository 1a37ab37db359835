"""Domain errors. HTTP codes are assigned to them in one place: farmstead.api.errors."""


class FarmsteadError(Exception):
    """Base of every error farmstead reports to a client."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class NotFound(FarmsteadError):
    """No such workflow, task, instance or array element."""


class InvalidTransition(FarmsteadError):
    """The requested move is not in the state machine."""


class Conflict(FarmsteadError):
    """The request clashes with the stored state (e.g. a second live instance for a task)."""


class BadRequest(FarmsteadError):
    """Input that is well-formed but unacceptable."""


class Malformed(FarmsteadError):
    """A request its face's protocol answers with a plain 400 (taskfarm's clients: a missing,
    unknown or bad key)."""


class Gone(FarmsteadError):
    """What was asked for existed once but was removed (events past their retention)."""


class Unavailable(FarmsteadError):
    """The database is down or a lock could not be had in time: retry later."""


class Unauthorized(FarmsteadError):
    """No credentials, or credentials that are unknown, expired or revoked."""


class Forbidden(FarmsteadError):
    """The credentials are good but their role or scope does not allow this."""
