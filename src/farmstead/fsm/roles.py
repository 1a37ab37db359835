"""Who may do what: roles and the permission each kind of route needs. Pure data."""

from enum import StrEnum


class Role(StrEnum):
    """A user's or token's role."""

    ADMIN = "admin"  # users, tokens, everything
    OPERATOR = "operator"  # submit, cancel, resume, read all (and report as any worker)
    WORKER = "worker"  # worker-node, distributor and claim routes only
    VIEWER = "viewer"  # read only


class Permission(StrEnum):
    """What a route needs."""

    PUBLIC = "public"  # liveness, readiness, docs, the state machine tables
    READ = "read"  # farmstead's own read routes
    READ_OR_WORK = "read_or_work"  # reads a worker needs too (taskfarm's runs and run info)
    WORK = "work"  # worker-node, distributor and claim routes
    OPERATE = "operate"  # submit, cancel, resume; worker tokens for a workflow
    ADMIN = "admin"  # users and tokens


ALLOWED: dict[Permission, frozenset[Role]] = {
    Permission.PUBLIC: frozenset(Role),
    Permission.READ: frozenset({Role.ADMIN, Role.OPERATOR, Role.VIEWER}),
    Permission.READ_OR_WORK: frozenset(Role),
    Permission.WORK: frozenset({Role.ADMIN, Role.OPERATOR, Role.WORKER}),
    Permission.OPERATE: frozenset({Role.ADMIN, Role.OPERATOR}),
    Permission.ADMIN: frozenset({Role.ADMIN}),
}

#: the roles a user of each role may hand to the tokens they own
GRANTABLE: dict[Role, frozenset[Role]] = {
    Role.ADMIN: frozenset(Role),
    Role.OPERATOR: frozenset({Role.OPERATOR, Role.WORKER, Role.VIEWER}),
    Role.WORKER: frozenset({Role.WORKER}),
    Role.VIEWER: frozenset({Role.VIEWER}),
}
