"""Shared fixtures: the fake Slack and a running recess server."""

from __future__ import annotations

import pytest

from tests.kit.slack import FakeSlack


@pytest.fixture
def slack():
    fake = FakeSlack()
    yield fake
    fake.close()


@pytest.fixture
def server_factory(tmp_path, slack):
    from tests.harness import start_server

    started = []

    def make(extra: str = "", clock=None, **kw):  # noqa: ANN001, ANN003
        srv = start_server(tmp_path, slack, extra, clock, **kw)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
