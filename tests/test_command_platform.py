"""The command platform's promises: shell hooks with RECESS_* variables, and the status JSON."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from commands.config import Config, parse_config
from platforms import CommandPlatform, LocalPlatform, PlatformError, make_platform
from platforms.command import parse_status
from platforms.hooks import run_hook
from tests.platform_fixtures import HERE, command_config, local_config

FAKE = f"{sys.executable} {HERE / 'fake_platform.py'}"


def fake_config(tmp_path: Path, **commands: str) -> Config:
    """Hooks that are fake_platform.py: its state folder comes through `env`, FAKE_FAIL through
    `pass_env` (hooks see nothing else of the test's environment)."""
    service = {"platform": "command", "command": commands,
               "env": {"FAKE_STATE": str(tmp_path / "fake")}, "pass_env": ["FAKE_FAIL"]}
    return parse_config({"services": {"web": service}}, base_dir=tmp_path)


@pytest.fixture
def scripted(tmp_path):
    """A command platform whose hooks are tests/platform_fixtures/fake_platform.py."""
    cfg = fake_config(
        tmp_path,
        start=f"{FAKE} start",
        stop=f"{FAKE} stop",
        shift=f"{FAKE} shift",
        status=f"{FAKE} status",
        health=f"{FAKE} health",
        migrate=f"{FAKE} migrate",
    )
    platform = make_platform(cfg, "web", "production")

    def calls() -> list[dict]:
        log = tmp_path / "fake" / "calls.jsonl"
        lines = log.read_text().splitlines() if log.exists() else []
        return [json.loads(line) for line in lines]

    platform.calls = calls
    return platform


def test_a_deploy_through_shell_hooks_is_seen_in_status(scripted):
    scripted.start("blue", "v1")
    scripted.shift({"blue": 100, "green": 0})
    scripted.start("green", "v2")
    scripted.shift({"blue": 0, "green": 100})
    traffic = scripted.status()
    assert traffic.weights == {"blue": 0, "green": 100}
    assert traffic.slot("blue").version == "v1" and traffic.slot("green").version == "v2"
    assert traffic.live_version == "v2"
    scripted.stop("blue")
    assert not scripted.status().slot("blue").running


def test_each_hook_gets_the_deploys_values_as_recess_variables(scripted):
    scripted.start("green", "v2.4.0")
    scripted.shift({"blue": 10, "green": 90})
    scripted.stop("blue")
    scripted.migrate("green", "v2.4.0", {"PGOPTIONS": "-c lock_timeout=5s"})
    start, shift, stop, migrate = scripted.calls()
    base = {"RECESS_SERVICE": "web", "RECESS_ENV": "production"}
    assert start == {"op": "start", "env": {**base, "RECESS_SLOT": "green", "RECESS_VERSION": "v2.4.0"}}
    assert shift["env"] == {**base, "RECESS_WEIGHTS": "blue=10,green=90",
                            "RECESS_WEIGHT_BLUE": "10", "RECESS_WEIGHT_GREEN": "90"}
    assert stop["env"] == {**base, "RECESS_SLOT": "blue"}
    assert migrate["env"] == {**base, "RECESS_SLOT": "green", "RECESS_VERSION": "v2.4.0",
                              "PGOPTIONS": "-c lock_timeout=5s"}


def test_a_failing_hook_names_the_operation_and_exit_code_but_not_the_command_and_keeps_its_output(
        scripted, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "start")
    with pytest.raises(PlatformError) as err:
        scripted.start("green", "v2")
    # The message is posted to the deploy's thread: the command's text stays in the log.
    assert str(err.value) == "start command failed with exit code 7"
    assert "fake_platform.py" not in str(err.value)
    assert "start went wrong on purpose" in err.value.output


def test_stop_with_a_version_refuses_a_slot_that_runs_another(scripted):
    scripted.start("blue", "v1")
    with pytest.raises(PlatformError, match="slot blue runs v1, not v2: not stopping it"):
        scripted.stop("blue", "v2")
    assert scripted.status().slot("blue").running
    scripted.stop("blue", "v1")
    assert not scripted.status().slot("blue").running
    stops = [c for c in scripted.calls() if c["op"] == "stop"]
    assert [c["env"]["RECESS_VERSION"] for c in stops] == ["v1"]  # the refused stop never ran


def test_health_is_the_health_hooks_exit_code(scripted):
    assert not scripted.health("green").ok
    scripted.start("green", "v2")
    assert scripted.health("green").ok


def test_without_a_health_hook_a_slot_is_healthy_when_status_shows_its_version(tmp_path):
    cfg = fake_config(tmp_path, start=f"{FAKE} start", stop=f"{FAKE} stop",
                         shift=f"{FAKE} shift", status=f"{FAKE} status")
    platform = make_platform(cfg, "web", "production")
    assert not platform.health("green").ok
    platform.start("green", "v2")
    assert platform.health("green").ok


def test_migration_result_carries_output_and_exit_code(scripted, monkeypatch):
    result = scripted.migrate("green", "v2", {})
    assert result.ok and result.exit_code == 0 and result.output == "migrated to v2\n"
    monkeypatch.setenv("FAKE_FAIL", "migrate")
    failed = scripted.migrate("green", "v2", {})
    assert not failed.ok and failed.exit_code == 7 and "migrate went wrong" in failed.output


def test_no_migrate_hook_is_a_success(tmp_path):
    cfg = command_config(tmp_path, start="true", stop="true", shift="true", status="true")
    result = make_platform(cfg, "web", "production").migrate("green", "v2", {})
    assert result.ok and result.output == "no migrate command"


def test_status_that_is_not_json_is_an_error(tmp_path):
    cfg = command_config(tmp_path, start="true", stop="true", shift="true", status="echo all good")
    with pytest.raises(PlatformError, match="did not print JSON") as err:
        make_platform(cfg, "web", "production").status()
    assert err.value.output == "all good\n"


@pytest.mark.parametrize(
    "printed, problem",
    [
        ('{"versions": {}}', 'without a "weights" object'),
        ('{"weights": {"blue": "lots"}}', "weights.blue must be a whole number"),
        ('[1, 2]', 'without a "weights" object'),
    ],
)
def test_status_json_of_the_wrong_shape_is_an_error(printed, problem):
    with pytest.raises(PlatformError, match=problem):
        parse_status(printed)


def test_status_json_may_say_what_runs_and_whether_the_router_is_up():
    traffic = parse_status(json.dumps({
        "weights": {"blue": 100, "green": 0},
        "versions": {"blue": "v1", "green": "v2"},
        "running": {"green": False},
        "router_up": False,
    }))
    assert traffic.slot("blue").running and traffic.slot("blue").version == "v1"
    assert not traffic.slot("green").running and traffic.slot("green").version is None
    assert not traffic.router_up


def test_a_hook_that_hangs_is_stopped_and_reported(tmp_path):
    cfg = command_config(tmp_path, start="sleep 5", stop="true", shift="true", status="true")
    platform = CommandPlatform("web", "production", cfg.services["web"], tmp_path, timeout=0.3)
    with pytest.raises(PlatformError, match="timed out after"):
        platform.start("green", "v2")


# A shift hook that hands the real work to a background child, then hangs. The child writes its pid
# at once, and only after a long nap would it "move traffic" (write the marker file).
LINGERING_SHIFT = (
    "sh -c 'echo $$ > child.pid; sleep 8; touch traffic-moved' & "
    "while [ ! -s child.pid ]; do sleep 0.01; done; echo child started; sleep 60"
)


def _gone(pid: int) -> bool:
    """True once the process no longer exists (a zombie counts as gone: it runs no code)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def _wait_until(condition, timeout: float = 30.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_timed_out_hooks_children_are_killed_with_it_and_never_move_traffic_later(tmp_path):
    cfg = command_config(tmp_path, start="true", stop="true", shift=LINGERING_SHIFT, status="true")
    platform = CommandPlatform("web", "production", cfg.services["web"], tmp_path, workdir=tmp_path, timeout=3)
    with pytest.raises(PlatformError) as err:
        platform.shift({"blue": 0, "green": 100})
    assert str(err.value) == "shift command timed out after 3 s; its process group was killed"
    assert "child started" in err.value.output  # what it printed before the kill is kept
    child = int((tmp_path / "child.pid").read_text())
    # Wait for the child to be gone (it is, at once, when its group was killed; left alone it
    # would live 8 s and write the marker on its way out), then the marker can never appear.
    assert _wait_until(lambda: _gone(child)), f"the hook's child {child} is still running"
    assert not (tmp_path / "traffic-moved").exists()


def test_a_hook_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    result = run_hook("trap '' TERM; echo stubborn; sleep 60 & wait; sleep 60", cwd=tmp_path, env=None,
                      timeout=0.5, grace=0.2)
    code, stdout, _ = result
    assert code is None and result.timed_out
    assert stdout == "stubborn\n"


def test_run_hook_gives_the_exit_code_and_both_outputs(tmp_path):
    result = run_hook("echo out; echo err >&2; exit 3", cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert result == (3, "out\n", "err\n")
    assert not result.timed_out and result.output == "out\nerr\n"


def test_a_health_hook_that_times_out_is_unhealthy_and_says_its_group_was_killed(tmp_path):
    cfg = command_config(tmp_path, start="true", stop="true", shift="true", status="true", health="sleep 60")
    platform = CommandPlatform("web", "production", cfg.services["web"], tmp_path, status_timeout=0.3)
    health = platform.health("green")
    assert not health.ok
    assert health.detail == "health command timed out after 0.3 s; its process group was killed"


def test_base_url_comes_from_status_urls_when_given(tmp_path):
    printed = json.dumps({"weights": {}, "urls": {"green": "https://green.example.org"}})
    cfg = command_config(tmp_path, start="true", stop="true", shift="true", status=f"echo '{printed}'")
    platform = make_platform(cfg, "web", "production")
    assert platform.base_url("green") == "https://green.example.org"
    assert platform.base_url("blue") == ""


def test_no_router_counters_and_nothing_to_drain(scripted):
    assert scripted.router_stats() == {}
    scripted.drain("blue", timeout=5)  # returns at once
    assert scripted.calls() == []


def test_weights_are_checked_before_any_hook_runs(scripted):
    with pytest.raises(PlatformError, match="unknown slot"):
        scripted.shift({"teal": 100})
    with pytest.raises(PlatformError, match="from 0 to 100"):
        scripted.shift({"blue": -1})


# -- the factory ----------------------------------------------------------------------------------


def test_factory_binds_a_driver_to_one_service_and_environment(tmp_path):
    local = make_platform(local_config(tmp_path), "web", "production")
    assert isinstance(local, LocalPlatform)
    assert (local.service, local.env) == ("web", "production")
    assert local.state_dir == tmp_path / ".recess" / "web.production"

    cfg = command_config(tmp_path, start="true", stop="true", shift="true", status="true")
    command = make_platform(cfg, "web", "production")
    assert isinstance(command, CommandPlatform) and command.workdir == tmp_path


def test_factory_refuses_an_unknown_service_or_environment(tmp_path):
    cfg = local_config(tmp_path)
    with pytest.raises(PlatformError, match="unknown service 'api'"):
        make_platform(cfg, "api", "production")
    with pytest.raises(PlatformError, match="not deployed to 'staging'"):
        make_platform(cfg, "web", "staging")
