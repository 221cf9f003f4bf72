"""End to end: signed /deploy and /rollback against recess, real demo processes, real HAProxy."""

from __future__ import annotations

import sys
import time

import httpx
import pytest

from storage import deploys as rows
from tests.harness import APPROVER_1, ENGINEER, FakeClock, free_port
from tests.kit.load import Load
from tests.test_window_commands import AFTER_SCHOOL

pytestmark = pytest.mark.e2e


def local_service(listen: int, blue: int, green: int, health_timeout: str = "15s") -> str:
    return f"""
[services.web]
platform = "local"
environments = ["production"]
health_path = "/api/v1/health"
health_timeout = "{health_timeout}"

[services.web.local]
listen = "127.0.0.1:{listen}"
slots = {{ blue = "127.0.0.1:{blue}", green = "127.0.0.1:{green}" }}
run = "{sys.executable} -m demo.app --port {{port}} --version {{version}}"
"""


def wait_status(srv, deploy_id: int, statuses: tuple[str, ...], timeout: float = 60) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = rows.get(srv.rt.store, deploy_id)
        if d and d["status"] in statuses:
            return d
        time.sleep(0.05)
    d = rows.get(srv.rt.store, deploy_id)
    raise AssertionError(f"deploy #{deploy_id} is {d['status']} ({d['outcome']}), expected {statuses}")


@pytest.fixture
def local_server(server_factory):
    ports = [free_port() for _ in range(3)]
    srv = server_factory(local_service(*ports), clock=FakeClock(AFTER_SCHOOL))
    srv.public = f"http://127.0.0.1:{ports[0]}"
    yield srv
    from platforms import make_platform

    make_platform(srv.cfg, "web", "production").shutdown()


def approve(srv, deploy_id: int) -> None:  # noqa: ANN001
    srv.rt.outbox.flush()
    ts = rows.get(srv.rt.store, deploy_id)["card_ts"]
    srv.click("deploy_approve", deploy_id, user=APPROVER_1, message_ts=ts)


def serves(public: str, version: str, timeout: float = 30) -> bool:
    """Waits until ten requests in a row to the public address are answered by `version`."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if {client.get(public + "/version").text.strip() for _ in range(10)} == {version}:
                return True
            time.sleep(0.01)
    return False


def test_v1_then_v2_served_at_listen_with_no_failed_request_and_a_one_click_rollback(local_server, slack):
    srv = local_server
    srv.command("/deploy", "web v1")
    approve(srv, 1)
    assert wait_status(srv, 1, ("succeeded", "failed"))["status"] == "succeeded"
    assert httpx.get(srv.public + "/version").text.strip() == "v1"

    with Load(srv.public) as load:
        load.wait_until(lambda t: t.by_version["v1"] >= 50, what="answers from v1")
        srv.command("/deploy", "web v2")
        approve(srv, 2)
        assert wait_status(srv, 2, ("succeeded", "failed"))["status"] == "succeeded"
        assert serves(srv.public, "v2")
        load.wait_until(lambda t: t.by_version["v2"] >= 50, what="answers from v2")
        # Roll back through the button: one click, and traffic is on v1 again.
        srv.click("rollback_card", 2, user=ENGINEER, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
        assert serves(srv.public, "v1")
        on_v1 = load.by_version["v1"]
        load.wait_until(lambda t: t.by_version["v1"] >= on_v1 + 50, what="answers from v1 after the rollback")
    assert load.failures == []
    rb = wait_status(srv, 3, ("succeeded", "failed"))
    assert rb["kind"] == "rollback" and rb["status"] == "succeeded" and "after the click" in rb["outcome"]


def test_a_version_that_never_gets_healthy_fails_and_v1_keeps_serving(server_factory, slack):
    ports = [free_port() for _ in range(3)]
    # v2 never gets healthy, so its deploy takes the whole health_timeout: short, but long enough
    # for v1 to boot on a busy machine.
    srv = server_factory(local_service(*ports, health_timeout="4s"), clock=FakeClock(AFTER_SCHOOL))
    public = f"http://127.0.0.1:{ports[0]}"
    try:
        srv.command("/deploy", "web v1")
        approve(srv, 1)
        wait_status(srv, 1, ("succeeded",))
        with Load(public, clients=4) as load:
            srv.command("/deploy", "web v2+unhealthy")
            approve(srv, 2)
            failed = wait_status(srv, 2, ("failed", "succeeded"))
            load.wait_until(lambda t: t.total >= 20)
        assert failed["status"] == "failed" and "did not answer 200" in failed["outcome"]
        assert httpx.get(public + "/version").text.strip() == "v1"
        assert load.failures == [] and set(load.by_version) == {"v1"}
        slack.wait_for(lambda s: any("failed" in t and f"<@{ENGINEER}>" in t for t in s.texts()))
        # A release that crashes on boot fails at once, with its output in the thread.
        srv.command("/deploy", "web v3+crash")
        approve(srv, 3)
        crashed = wait_status(srv, 3, ("failed", "succeeded"))
        assert crashed["status"] == "failed"
        assert httpx.get(public + "/version").text.strip() == "v1"
    finally:
        from platforms import make_platform

        make_platform(srv.cfg, "web", "production").shutdown()
