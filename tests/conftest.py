"""Test-suite settings shared by every test folder.

Hypothesis: under CI (``CI`` set, as ``.ci/run`` runs) the property tests draw the same
examples on every run (``derandomize``) and keep no example database, so a green CI run is
reproducible; locally they explore new random examples each run. ``HYPOTHESIS_PROFILE``
picks a profile explicitly (``ci`` or ``dev``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support.postgres import PostgresCluster, in_ci, postgres_unavailable

settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# -- PostgreSQL ----------------------------------------------------------------------------------
# One throwaway cluster per test session (tests/support/postgres.py), started on first use;
# each test that asks for ``postgres_dsn`` gets a fresh database on it. Outside CI a machine
# without PostgreSQL skips those tests (saying why); under CI they fail instead.


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The session's PostgreSQL cluster (TCP on 127.0.0.1, password auth)."""
    reason = postgres_unavailable()
    if reason is not None:
        if in_ci():
            pytest.fail(f"PostgreSQL is required under CI: {reason}", pytrace=False)
        pytest.skip(reason)
    cluster = PostgresCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A DSN of a fresh, empty database, dropped after the test."""
    dsn = postgres_cluster.create_database()
    try:
        yield dsn
    finally:
        postgres_cluster.drop_database(dsn)
