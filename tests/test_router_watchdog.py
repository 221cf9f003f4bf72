"""The router is watched (issue 9): a live HAProxy is never stopped because its admin socket is
slow, a dead one is started again with the weights it had and the channel is told, and a deploy
whose router dies during the bake is never reported live. Real HAProxy, real demo processes."""

from __future__ import annotations

import os
import shutil
import signal

import httpx
import pytest

from platforms.base import PlatformError
from storage import deploys as rows
from tests.harness import BASE_CONFIG, FakeClock, free_port
from tests.platform_fixtures import get
from tests.platform_fixtures import wait_until as _wait_until
from tests.test_e2e_local import approve, local_service, wait_status
from tests.test_local_platform import make_local, router_pid, serving_v1  # noqa: F401 (fixtures)
from tests.test_window_commands import AFTER_SCHOOL

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="HAProxy is not installed (make test installs it)"),
]


def wait_until(predicate, timeout: float = 30.0) -> bool:  # noqa: ANN001
    return _wait_until(predicate, timeout=timeout)


def test_a_live_router_whose_admin_socket_hangs_is_never_stopped(serving_v1):
    platform = serving_v1
    platform.router.admin_timeout = 0.5
    pid = router_pid(platform)
    os.kill(pid, signal.SIGSTOP)  # alive, but its admin socket answers nothing
    try:
        assert platform.status().router_up is False
        with pytest.raises(PlatformError, match="runs but its admin socket does not answer"):
            platform.ensure_router()
        assert platform.watch_router() is None  # the watchdog sees a live pid: nothing to revive
        with pytest.raises(PlatformError):
            platform.shift({"blue": 0, "green": 100})
    finally:
        os.kill(pid, signal.SIGCONT)
    assert router_pid(platform) == pid  # the same HAProxy, with every connection it held
    assert wait_until(lambda: platform.status().router_up)
    assert get(platform.settings.listen)[1] == "v1"


def test_a_killed_router_is_revived_with_its_weights_from_the_server_state_file(serving_v1):
    platform = serving_v1
    platform.start("green", "v2")
    assert wait_until(lambda: platform.health("green").ok)
    platform.shift({"blue": 0, "green": 100})
    state = (platform.state_dir / "haproxy.state").read_text()
    assert "green" in state and state.startswith("1")
    (platform.state_dir / "weights.json").unlink()  # the state file alone carries the weights
    old = router_pid(platform)
    assert platform.watch_router() is None
    os.kill(old, signal.SIGKILL)
    # gone from /proc too: a process still tearing itself down has closed its socket but is not yet dead
    assert wait_until(lambda: not platform.router_running() and platform.router.pid() is None)
    revival = platform.watch_router()
    assert revival is not None and revival.error is None and revival.down_for is not None
    assert router_pid(platform) != old
    assert platform.status().weights == {"blue": 0, "green": 100}
    assert {get(platform.settings.listen)[1] for _ in range(5)} == {"v2"}


def test_a_router_that_dies_during_the_bake_is_revived_and_the_deploy_is_never_reported_live(server_factory, slack):
    ports = [free_port() for _ in range(3)]
    base = BASE_CONFIG.replace('bake_time = "0s"', 'bake_time = "8s"', 1)
    srv = server_factory(local_service(*ports), clock=FakeClock(AFTER_SCHOOL), base=base)
    public = f"http://127.0.0.1:{ports[0]}"
    state_dir = srv.cfg.state_dir / "web.production"
    try:
        srv.command("/deploy", "web v1")
        approve(srv, 1)
        assert wait_status(srv, 1, ("succeeded", "failed"), timeout=90)["status"] == "succeeded"
        srv.command("/deploy", "web v2")
        approve(srv, 2)
        assert wait_until(lambda: (rows.get(srv.rt.store, 2) or {}).get("traffic_at") is not None, timeout=60)
        assert httpx.get(public + "/version").text.strip() == "v2"
        old = int((state_dir / "haproxy.pid").read_text().split()[0])
        os.kill(old, signal.SIGKILL)  # a second into the bake, every public request is refused
        ended = wait_status(srv, 2, ("rolled_back", "needs_attention", "succeeded", "failed"), timeout=90)
        assert ended["status"] == "rolled_back", ended["outcome"]
        assert "router died" in ended["outcome"]
        # The router is back, with traffic on v1, and the channel was told how long it was down.
        assert wait_until(lambda: _answers(public) == "v1", timeout=30)
        slack.wait_for(lambda s: any("router of *web* in production died and was restarted" in t and "down for" in t
                                     for t in s.texts()))
        assert not any("*web v2* is live" in t for t in slack.texts())
    finally:
        from platforms import make_platform

        make_platform(srv.cfg, "web", "production").shutdown()


def _answers(url: str) -> str | None:
    try:
        return httpx.get(url + "/version", timeout=2).text.strip()
    except httpx.HTTPError:
        return None


def test_the_pipeline_and_the_watchdog_never_stop_a_router_whose_socket_is_slow(server_factory, slack):
    """The retire sweep and every status read used to kill a HAProxy that was slow to answer."""
    ports = [free_port() for _ in range(3)]
    srv = server_factory(local_service(*ports), clock=FakeClock(AFTER_SCHOOL))
    public = f"http://127.0.0.1:{ports[0]}"
    state_dir = srv.cfg.state_dir / "web.production"
    try:
        srv.command("/deploy", "web v1")
        approve(srv, 1)
        assert wait_status(srv, 1, ("succeeded", "failed"), timeout=90)["status"] == "succeeded"
        pid = int((state_dir / "haproxy.pid").read_text().split()[0])
        os.kill(pid, signal.SIGSTOP)
        try:
            d = srv.rt.extras["deployer"]
            d.retire_due()
            assert d.watch_routers() == []
            srv.command("/deploy", "web v2")
            approve(srv, 2)
            failed = wait_status(srv, 2, ("failed", "succeeded", "needs_attention"), timeout=90)
            assert failed["status"] == "failed" and "does not answer" in failed["outcome"]
        finally:
            os.kill(pid, signal.SIGCONT)
        assert int((state_dir / "haproxy.pid").read_text().split()[0]) == pid
        assert _answers(public) == "v1"
    finally:
        from platforms import make_platform

        make_platform(srv.cfg, "web", "production").shutdown()
