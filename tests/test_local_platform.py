"""The local platform's promises, against real HAProxy and real demo app processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from platforms import PlatformError, make_platform
from platforms.local import HAPROXY_MISSING, LocalPlatform
from tests.kit.load import Load
from tests.platform_fixtures import free_port, get, local_config
from tests.platform_fixtures import wait_until as _wait_until

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="HAProxy is not installed")


@pytest.fixture
def make_local(tmp_path):
    """Builds LocalPlatform drivers on one config; every process they started is stopped after."""
    cfg = local_config(tmp_path)
    made: list[LocalPlatform] = []

    def make(**kwargs) -> LocalPlatform:  # noqa: ANN003
        if kwargs:
            spec = cfg.services["web"]
            platform = LocalPlatform("web", "production", spec, cfg.state_dir / "web.production",
                                     workdir=tmp_path, **kwargs)
        else:
            platform = make_platform(cfg, "web", "production")
        made.append(platform)
        return platform

    make.cfg = cfg
    yield make
    for platform in made:
        platform.shutdown()


def wait_until(predicate, timeout: float = 30.0) -> bool:  # noqa: ANN001
    """A condition waited for, generously: on a busy machine a slot may take seconds to boot."""
    return _wait_until(predicate, timeout=timeout)


def with_env(platform: LocalPlatform, **env: str) -> LocalPlatform:
    """The service's `env` table, as `[services.web] env = {...}` sets it: what its slots see (the
    bot's own environment does not reach them)."""
    platform.spec = platform.spec.model_copy(update={"env": {**platform.spec.env, **env}})
    return platform


def listen(platform: LocalPlatform) -> str:
    return platform.settings.listen


def slot_pid(platform: LocalPlatform, slot: str) -> int:
    return int((platform.state_dir / f"{slot}.pid").read_text())


def live_group_members(pgid: int) -> list[int]:
    """Processes of the group that are not zombies (this container's init reaps nothing)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            members.append(int(stat.parent.name))
    return members


def router_pid(platform: LocalPlatform) -> int:
    return int((platform.state_dir / "haproxy.pid").read_text().split()[0])


@pytest.fixture
def serving_v1(make_local):
    """v1 healthy in blue with all the traffic."""
    platform = make_local()
    platform.start("blue", "v1")
    assert wait_until(lambda: platform.health("blue").ok)
    platform.shift({"blue": 100, "green": 0})
    return platform


# -- serving and flipping -------------------------------------------------------------------------


@pytest.mark.e2e
@needs_haproxy
def test_first_version_in_blue_is_served_at_the_public_address(serving_v1):
    assert get(listen(serving_v1)) == (200, "v1")
    traffic = serving_v1.status()
    assert traffic.router_up
    assert traffic.weights == {"blue": 100, "green": 0}
    assert traffic.live_version == "v1"
    assert traffic.slot("blue").running and not traffic.slot("green").running


@pytest.mark.e2e
@needs_haproxy
def test_shift_sends_requests_to_green_and_shift_back_returns_them_to_blue(serving_v1):
    platform = serving_v1
    platform.start("green", "v2")
    assert wait_until(lambda: platform.health("green").ok)
    assert get(listen(platform)) == (200, "v1")  # starting green moves no traffic

    platform.shift({"blue": 0, "green": 100})
    assert {get(listen(platform))[1] for _ in range(10)} == {"v2"}
    assert platform.status().live_version == "v2"

    platform.shift({"blue": 100, "green": 0})
    assert {get(listen(platform))[1] for _ in range(10)} == {"v1"}


@pytest.mark.e2e
@needs_haproxy
def test_canary_weights_split_traffic_between_both_versions(serving_v1):
    platform = serving_v1
    platform.start("green", "v2")
    assert wait_until(lambda: platform.health("green").ok)
    platform.shift({"blue": 50, "green": 50})
    assert platform.status().split
    assert {get(listen(platform))[1] for _ in range(20)} == {"v1", "v2"}


@pytest.mark.e2e
@needs_haproxy
def test_shift_under_20_concurrent_keep_alive_clients_loses_no_request(serving_v1):
    platform = serving_v1
    platform.start("green", "v2")
    assert wait_until(lambda: platform.health("green").ok)
    with Load(listen(platform), clients=20) as clients:
        # 20 flips, and after each one the clients get 25 more answers, however long that takes.
        for flip in range(20):
            platform.shift({"green" if flip % 2 == 0 else "blue": 100})
            answered = clients.count()
            clients.wait_until(lambda t, n=answered: t.total >= n + 25, what=f"25 answers after flip {flip + 1}")
    assert clients.failures == []
    assert clients.total >= 20 * 25
    assert set(clients.by_version) == {"v1", "v2"}
    assert clients.connections_opened == 20  # no connection was closed under the clients


@pytest.mark.e2e
@needs_haproxy
def test_full_deploy_cycles_with_drain_and_stop_under_load_lose_no_request(serving_v1):
    platform = serving_v1
    with Load(listen(platform), clients=20) as clients:
        for live, new, version in (("blue", "green", "v2"), ("green", "blue", "v3")):
            platform.start(new, version)
            assert wait_until(lambda s=new: platform.health(s).ok)
            platform.shift({new: 100})
            clients.wait_until(lambda t, v=version: t.by_version[v] >= 20, what=f"answers from {version}")
            platform.drain(live, timeout=15)
            platform.stop(live)
        clients.wait_until(lambda t: t.by_version["v3"] >= 100, what="answers from v3 once v2 is stopped")
    assert clients.failures == []
    assert {"v1", "v2", "v3"} <= set(clients.by_version)
    assert platform.status().live_version == "v3"


# -- real state, bot restarts, router restarts ----------------------------------------------------


@pytest.mark.e2e
@needs_haproxy
def test_status_after_bot_restart_reports_what_really_runs(serving_v1, make_local):
    serving_v1.start("green", "v2")
    serving_v1.shift({"blue": 0, "green": 100})

    fresh = make_local()  # a new bot process knows only the state directory
    traffic = fresh.status()
    assert traffic.weights == {"blue": 0, "green": 100}
    assert traffic.slot("blue").version == "v1" and traffic.slot("blue").running
    assert traffic.slot("green").version == "v2" and traffic.slot("green").running
    assert router_pid(fresh) == router_pid(serving_v1)  # HAProxy was re-used, not restarted


@pytest.mark.e2e
@needs_haproxy
def test_status_reports_a_slot_killed_behind_its_back_as_not_running(serving_v1, make_local):
    os.killpg(slot_pid(serving_v1, "blue"), signal.SIGKILL)
    fresh = make_local()
    assert wait_until(lambda: not fresh.status().slot("blue").running)
    traffic = fresh.status()
    assert traffic.slot("blue").version is None
    assert traffic.weights["blue"] == 100  # the router still points there: the real state
    health = fresh.health("blue")
    assert not health.ok and health.exited


@pytest.mark.e2e
@needs_haproxy
def test_killed_router_comes_back_with_the_live_weights(serving_v1, make_local):
    platform = serving_v1
    platform.start("green", "v2")
    platform.shift({"blue": 0, "green": 100})
    old = router_pid(platform)
    os.kill(old, signal.SIGKILL)
    # gone from /proc too: a process still tearing itself down has closed its socket but is not yet dead
    assert wait_until(lambda: not platform.router_running() and platform.router.pid() is None)

    fresh = make_local()  # a new bot process: it reads the dead router as down, and leaves it to the watchdog
    assert fresh.status().router_up is False
    revival = fresh.watch_router()
    assert revival is not None and revival.weights == {"blue": 0, "green": 100} and revival.error is None
    traffic = fresh.status()
    assert traffic.router_up
    assert router_pid(fresh) != old
    assert traffic.weights == {"blue": 0, "green": 100}
    assert {get(listen(fresh))[1] for _ in range(5)} == {"v2"}
    config = (fresh.state_dir / "haproxy.cfg").read_text()
    assert "server green" in config and "server-state-file" in config and config.endswith("\n")
    assert fresh.watch_router() is None  # alive now: nothing to do


@pytest.mark.e2e
@needs_haproxy
def test_drain_waits_for_the_last_session_on_the_old_slot(serving_v1):
    platform = serving_v1
    platform.start("green", "v2")
    assert wait_until(lambda: platform.health("green").ok)
    answers: list[tuple[int, str]] = []
    slow = threading.Thread(target=lambda: answers.append(get(listen(platform), "/slow?seconds=1", timeout=5)))
    slow.start()
    assert wait_until(lambda: platform.router_stats()["blue"].current_sessions == 1)
    platform.shift({"blue": 0, "green": 100})

    platform.drain("blue", timeout=15)
    # Had drain returned before the session ended, the slow request (a second long) would still
    # be open on blue now.
    assert platform.router_stats()["blue"].current_sessions == 0
    slow.join()
    assert answers == [(200, "v1 after 1 s\n")]


@pytest.mark.e2e
@needs_haproxy
def test_router_stats_count_requests_and_5xx_per_slot(make_local):
    platform = with_env(make_local(), DEMO_FAIL_AFTER_SECONDS="0")
    platform.start("green", "v3-bad")
    platform.shift({"green": 100})
    assert wait_until(lambda: get(listen(platform))[0] == 500)
    for _ in range(4):
        get(listen(platform))
    stats = platform.router_stats()
    assert stats["green"].requests >= 5
    assert stats["green"].responses_5xx >= 5
    assert stats["blue"].requests == 0


# -- starting and stopping ------------------------------------------------------------------------


@pytest.mark.e2e
@needs_haproxy
def test_a_version_that_exits_at_once_fails_start_with_its_output(make_local):
    platform = with_env(make_local(), DEMO_EXIT_AT_START="1")
    with pytest.raises(PlatformError) as err:
        platform.start("green", "v9")
    assert "exit code 3" in str(err.value)
    assert "DEMO_EXIT_AT_START" in err.value.output
    assert not platform.status().slot("green").running


@pytest.mark.e2e
@needs_haproxy
def test_start_replaces_what_ran_in_the_slot_and_passes_recess_variables(make_local):
    platform = make_local()
    platform.start("blue", "v1")
    first = slot_pid(platform, "blue")
    platform.start("blue", "v1.1")
    assert not Path(f"/proc/{first}").exists()  # stopped and reaped before the new one started
    assert platform.status().slot("blue").version == "v1.1"
    environ = Path(f"/proc/{slot_pid(platform, 'blue')}/environ").read_bytes().split(b"\0")
    assert b"RECESS_SLOT=blue" in environ and b"RECESS_VERSION=v1.1" in environ
    assert b"RECESS_SERVICE=web" in environ and b"RECESS_ENV=production" in environ
    assert f"RECESS_PORT={platform.settings.slots['blue'].rsplit(':', 1)[1]}".encode() in environ


@pytest.mark.e2e
@needs_haproxy
def test_stop_ends_the_slot_and_can_be_repeated(serving_v1):
    pid = slot_pid(serving_v1, "blue")
    serving_v1.stop("blue")
    serving_v1.stop("blue")
    serving_v1.stop("green")  # nothing ever ran there
    assert not serving_v1.status().slot("blue").running
    assert not (serving_v1.state_dir / "blue.pid").exists()
    assert live_group_members(pid) == []  # the shell and the app it ran


@pytest.mark.e2e
@needs_haproxy
def test_stop_kills_a_slot_that_ignores_sigterm(tmp_path):
    cfg = local_config(tmp_path, run="trap '' TERM; : {port}; sleep 600")
    platform = LocalPlatform("web", "production", cfg.services["web"], tmp_path / "state", stop_timeout=0.3)
    try:
        platform.start("blue", "stubborn")
        pid = slot_pid(platform, "blue")
        assert live_group_members(pid) != []
        platform.stop("blue")
        assert live_group_members(pid) == []  # it would have run for ten minutes: it was killed
    finally:
        platform.shutdown()


@pytest.mark.e2e
@needs_haproxy
def test_health_reports_the_status_of_a_failing_version(make_local):
    platform = with_env(make_local(), DEMO_HEALTH_FAIL="1")
    platform.start("green", "v2")
    assert wait_until(lambda: platform.health("green").status is not None)
    health = platform.health("green")
    assert not health.ok and health.status == 503 and not health.exited


# -- without HAProxy, and commands ----------------------------------------------------------------


def test_missing_haproxy_is_a_clear_error(make_local, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    platform = make_local()
    with pytest.raises(PlatformError) as err:
        platform.shift({"blue": 100})
    assert str(err.value) == HAPROXY_MISSING
    assert platform.status().serving is None  # never started: nothing routed, and nothing pretends to be

    named = make_local(haproxy_bin="/nonexistent/haproxy")
    with pytest.raises(PlatformError, match="apt-get install haproxy"):
        named.ensure_router()


def test_bad_weights_are_refused_before_touching_the_router(make_local):
    platform = make_local(haproxy_bin="/nonexistent/haproxy")
    with pytest.raises(PlatformError, match="unknown slot 'purple'"):
        platform.shift({"purple": 100})
    with pytest.raises(PlatformError, match="whole number from 0 to 100"):
        platform.shift({"blue": 101})


@needs_haproxy
def test_generated_router_config_is_accepted_by_haproxy(make_local):
    platform = make_local()
    text = platform.router_config({"blue": 0, "green": 100})
    path = platform.state_dir / "check.cfg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    done = subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    for line in ("retries 3", "option redispatch 1", "retry-on conn-failure empty-response response-timeout",
                 "default-server init-addr last,libc,none", "maxconn 2000", "level admin",
                 "weight 100"):
        assert line in text
    assert text.endswith("\n")


def test_migrate_runs_the_command_with_recess_and_extra_variables(tmp_path):
    cfg = local_config(tmp_path, migrate='echo "$RECESS_SLOT $RECESS_VERSION $PGOPTIONS" {version} {port}')
    platform = make_platform(cfg, "web", "production")
    result = platform.migrate("green", "v2.4.0", {"PGOPTIONS": "-c lock_timeout=5s"})
    port = cfg.services["web"].local.slots["green"].rsplit(":", 1)[1]
    assert result == type(result)(ok=True, output=f"green v2.4.0 -c lock_timeout=5s v2.4.0 {port}\n", exit_code=0)


def test_failed_migration_reports_its_output_and_exit_code(tmp_path):
    cfg = local_config(tmp_path, migrate="echo relation already exists >&2; exit 4")
    result = make_platform(cfg, "web", "production").migrate("green", "v2", {})
    assert not result.ok and result.exit_code == 4 and "relation already exists" in result.output


def test_no_migrate_command_is_a_success(tmp_path):
    result = make_platform(local_config(tmp_path), "web", "production").migrate("green", "v2", {})
    assert result.ok and result.output == "no migrate command"


def test_a_version_string_never_becomes_shell_syntax(tmp_path):
    cfg = local_config(tmp_path, migrate="echo {version}")
    result = make_platform(cfg, "web", "production").migrate("green", "v2; touch pwned", {})
    assert result.output == "v2; touch pwned\n"
    assert not (tmp_path / "pwned").exists()


def test_base_url_is_the_slot_address(tmp_path):
    cfg = local_config(tmp_path)
    platform = make_platform(cfg, "web", "production")
    assert platform.base_url("green") == "http://" + cfg.services["web"].local.slots["green"]


# -- the demo app on its own ----------------------------------------------------------------------


def _demo(port: int, version: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "demo.app", "--port", str(port), "--version", version],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


@pytest.mark.e2e
def test_demo_app_answers_its_routes_and_exits_cleanly_on_sigterm():
    port = free_port()
    proc = _demo(port, "v2.4.0")
    try:
        address = f"127.0.0.1:{port}"
        assert wait_until(lambda: _answers(address))
        assert get(address, "/api/v1/health") == (200, '{"status": "ok", "version": "v2.4.0"}')
        assert get(address, "/version") == (200, "v2.4.0")
        status, page = get(address, "/")
        assert status == 200 and "v2.4.0" in page
        assert get(address, "/nope")[0] == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


@pytest.mark.e2e
def test_demo_app_turns_bad_after_the_configured_seconds():
    port = free_port()
    proc = _demo(port, "v3", DEMO_FAIL_AFTER_SECONDS="0.5")
    try:
        address = f"127.0.0.1:{port}"
        assert wait_until(lambda: _answers(address))
        assert wait_until(lambda: get(address, "/api/v1/health")[0] == 500)
        assert get(address, "/version")[0] == 500
    finally:
        proc.kill()
        proc.wait()


def _answers(address: str) -> bool:
    try:
        get(address, "/version", timeout=0.5)
        return True
    except OSError:
        return False


@pytest.mark.parametrize("depth", [40, 75, 85, 120])
def test_the_admin_socket_path_always_fits_haproxys_limit(tmp_path, depth):
    cfg = local_config(tmp_path)
    deep = tmp_path / ("d" * max(1, depth - len(str(tmp_path))))
    platform = LocalPlatform("web", "production", cfg.services["web"], deep)
    assert len(str(platform.router.socket_path())) <= 97  # HAProxy refuses longer stats socket paths
