"""Integration-only fixtures: every in-process client fails the test on a server error."""

import pytest
from factories import guard


@pytest.fixture(autouse=True)
def _never_a_500(request: pytest.FixtureRequest) -> None:
    """A 500 is a bug: any test that uses `client` fails on one, whatever it asserts."""
    if "client" in request.fixturenames:
        guard(request.getfixturevalue("client"))
