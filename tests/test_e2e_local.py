"""End to end: signed /deploy and /rollback against recess, real demo processes, real HAProxy."""

from __future__ import annotations

import sys
import threading
import time

import httpx
import pytest

from storage import deploys as rows
from tests.harness import APPROVER_1, ENGINEER, FakeClock, free_port
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


class Load:
    """Keep-alive clients hammering the public address, counting answers per version and failures."""

    def __init__(self, url: str, clients: int = 8, pause: float = 0.0) -> None:
        self.url = url
        self.pause = pause
        self.by_version: dict[str, int] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.url + "/version")
                    ok = r.status_code == 200
                    key = r.text.strip() if ok else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    ok, key = False, type(exc).__name__
                with self._lock:
                    if ok:
                        self.by_version[key] = self.by_version.get(key, 0) + 1
                    else:
                        self.failures.append(key)
                if self.pause:
                    self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=10)


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
    srv.sender.action("deploy_approve", str(deploy_id), user=APPROVER_1, message_ts=ts)


def test_v1_then_v2_served_at_listen_with_no_failed_request_and_a_fast_rollback(local_server, slack):
    srv = local_server
    srv.command("/deploy", "web v1")
    approve(srv, 1)
    assert wait_status(srv, 1, ("succeeded", "failed"))["status"] == "succeeded"
    assert httpx.get(srv.public + "/version").text.strip() == "v1"

    load = Load(srv.public)
    try:
        time.sleep(0.3)
        srv.command("/deploy", "web v2")
        approve(srv, 2)
        assert wait_status(srv, 2, ("succeeded", "failed"))["status"] == "succeeded"
        time.sleep(0.3)
        assert httpx.get(srv.public + "/version").text.strip() == "v2"
        # Roll back through the button: traffic is on v1 within a second of the click.
        clicked = time.monotonic()
        srv.sender.action("rollback_card", "2", user=ENGINEER, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
        while httpx.get(srv.public + "/version").text.strip() != "v1":
            assert time.monotonic() - clicked < 1.0, "rollback took longer than a second"
            time.sleep(0.005)
        time.sleep(0.3)
    finally:
        load.stop()
    assert load.failures == []
    assert load.by_version.get("v1", 0) > 0 and load.by_version.get("v2", 0) > 0
    rb = rows.get(srv.rt.store, 3)
    assert rb["kind"] == "rollback" and rb["status"] == "succeeded" and "after the click" in rb["outcome"]


def test_a_version_that_never_gets_healthy_fails_and_v1_keeps_serving(server_factory, slack):
    ports = [free_port() for _ in range(3)]
    srv = server_factory(local_service(*ports, health_timeout="2s"), clock=FakeClock(AFTER_SCHOOL))
    public = f"http://127.0.0.1:{ports[0]}"
    try:
        srv.command("/deploy", "web v1")
        approve(srv, 1)
        wait_status(srv, 1, ("succeeded",))
        load = Load(public, clients=4)
        try:
            srv.command("/deploy", "web v2+unhealthy")
            approve(srv, 2)
            failed = wait_status(srv, 2, ("failed", "succeeded"))
        finally:
            load.stop()
        assert failed["status"] == "failed" and "did not answer 200" in failed["outcome"]
        assert httpx.get(public + "/version").text.strip() == "v1"
        assert load.failures == [] and set(load.by_version) == {"v1"}
        slack.wait_for(lambda s: any("failed" in t and f"<@{ENGINEER}>" in t for t in s.texts()))
        # A release that crashes on boot fails at once, with its output in the thread.
        srv.command("/deploy", "web v3+crash")
        approve(srv, 3)
        crashed = wait_status(srv, 3, ("failed", "succeeded"), timeout=20)
        assert crashed["status"] == "failed"
        assert httpx.get(public + "/version").text.strip() == "v1"
    finally:
        from platforms import make_platform

        make_platform(srv.cfg, "web", "production").shutdown()
