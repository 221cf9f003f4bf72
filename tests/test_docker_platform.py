"""The docker platform's promises, against a real engine (Podman here) and real HAProxy.

Images are built locally FROM scratch with a static busybox (tests/docker): no registry is
reachable. Without an engine that can run containers, these tests are skipped with one reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from commands.config import ConfigError, load_config, parse_config
from platforms import PlatformError, make_platform
from platforms.docker import DockerPlatform
from tests.docker import app_context, engine, remove_everything, require_engine, unique
from tests.kit.load import Load
from tests.platform_fixtures import free_port, get, wait_until

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="HAProxy is not installed")


def docker_table(tmp_path: Path, service: str, **overrides: Any) -> dict[str, Any]:
    docker: dict[str, Any] = {
        "image": f"localhost/recess-test-{service}",
        "port": 8000,
        "listen": f"127.0.0.1:{free_port()}",
        "slots": {"blue": f"127.0.0.1:{free_port()}", "green": f"127.0.0.1:{free_port()}"},
        "engine": engine(),
        "build": {"context": "app"},
    }
    docker.update(overrides)
    return {"services": {service: {"platform": "docker", "health_path": "/health", "docker": docker}}}


@pytest.fixture
def containers(tmp_path):
    """Makes docker platforms on a fresh service (its own name, image and ports); removes every
    container, image and router it made afterwards. Making one skips the test when no engine can
    run containers (from one line: pytest's summary folds them into one)."""
    app_context(tmp_path / "app")
    made: list[DockerPlatform] = []

    def make(service: str | None = None, **overrides: Any) -> DockerPlatform:
        require_engine()
        service = service or unique("t")
        cfg = parse_config(docker_table(tmp_path, service, **overrides), base_dir=tmp_path)
        platform = make_platform(cfg, service, "production")
        assert isinstance(platform, DockerPlatform)
        made.append(platform)
        return platform

    yield make
    for platform in made:
        platform.router.stop()
        remove_everything(platform.service, platform.image)


def engine_json(*args: str) -> str:
    return subprocess.run([engine(), *args], capture_output=True, text=True, timeout=60).stdout


# -- configuration (no engine needed) ------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "message"), [
    ("engine", "dockerd", "services.core.docker.engine: input should be 'docker' or 'podman', got 'dockerd'"),
    ("image", "Ghcr.io/District/Core", "services.core.docker.image: expected a valid image reference"),
    ("image", "ghcr.io/district/core:latest", "services.core.docker.image: expected an image name without a tag"),
    ("port", 70000, "services.core.docker.port: expected the port the app listens on inside the container, from 1 to 65535"),
    ("port", 0, "services.core.docker.port: expected the port"),
    ("run_args", "--env-file core.env", "services.core.docker.run_args: expected a list of strings"),
    ("run_args", ["--memory", 512], "services.core.docker.run_args: expected a list of strings"),
    ("migrate", "bin/rails db:migrate", "services.core.docker.migrate: expected a list of strings"),
    ("listen", "8080", "services.core.docker.listen: expected HOST:PORT"),
])
def test_a_wrong_docker_key_is_named_in_the_error(tmp_path, key, value, message):
    data = docker_table(tmp_path, "core", **{key: value})
    with pytest.raises(ConfigError) as err:
        parse_config(data, base_dir=tmp_path)
    assert message in str(err.value)


def test_a_build_context_that_does_not_exist_stops_the_config_check(tmp_path):
    (tmp_path / "recess.toml").write_text("""
[services.core]
platform = "docker"

[services.core.docker]
image = "ghcr.io/district/core"
port = 3000
listen = "127.0.0.1:8080"
slots = { blue = "127.0.0.1:9001", green = "127.0.0.1:9002" }
build = { context = "apps/core" }
""")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "recess.toml")
    assert "services.core.docker.build.context: no such folder 'apps/core' (relative to the config's folder)" in str(err.value)
    (tmp_path / "apps" / "core").mkdir(parents=True)
    with pytest.raises(ConfigError, match="services.core.docker.build.dockerfile: no such file 'Dockerfile'"):
        load_config(tmp_path / "recess.toml")
    (tmp_path / "apps" / "core" / "Dockerfile").write_text("FROM scratch\n")
    cfg = load_config(tmp_path / "recess.toml")
    docker = cfg.services["core"].docker
    assert docker is not None
    assert (docker.engine, docker.pull, docker.run_args, docker.migrate, docker.build.dockerfile) == \
        ("docker", False, [], None, "Dockerfile")
    assert cfg.services["core"].keep_images == 5


def test_a_docker_service_needs_its_table_and_builds_from_it(tmp_path):
    with pytest.raises(ConfigError, match=r"platform 'docker' needs a \[services.NAME.docker\] table"):
        parse_config({"services": {"core": {"platform": "docker"}}}, base_dir=tmp_path)
    data = docker_table(tmp_path, "core")
    data["services"]["core"]["build"] = "make image"
    with pytest.raises(ConfigError, match="services.core: build: expected no shell command on a docker service"):
        parse_config(data, base_dir=tmp_path)


def test_an_engine_that_is_not_installed_fails_with_the_install_hint(tmp_path, monkeypatch):
    cfg = parse_config(docker_table(tmp_path, "core", engine="docker"), base_dir=tmp_path)
    platform = make_platform(cfg, "core", "production")
    monkeypatch.setenv("PATH", str(tmp_path / "no-engine-here"))
    with pytest.raises(PlatformError, match="docker is not installed: install Docker Engine"):
        platform.build("v1")


def test_an_engine_that_is_not_running_fails_the_build_with_its_own_message_and_the_hint(tmp_path):
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI to try without its daemon")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0:
        pytest.skip("a Docker daemon runs here")
    app_context(tmp_path / "app")
    cfg = parse_config(docker_table(tmp_path, "core", engine="docker"), base_dir=tmp_path)
    platform = make_platform(cfg, "core", "production")
    with pytest.raises(PlatformError) as err:
        platform.build("v1")
    assert "Cannot connect to the Docker daemon" in str(err.value) and "install Docker Engine" in str(err.value)


def test_a_version_that_is_not_an_image_tag_is_refused_by_the_driver(tmp_path):
    cfg = parse_config(docker_table(tmp_path, "core"), base_dir=tmp_path)
    platform = make_platform(cfg, "core", "production")
    for bad in ("v1/evil", "v" * 129, "v1+build.5", "-v1"):
        with pytest.raises(PlatformError, match="is not a valid image tag"):
            platform.start("green", bad)
    platform.router.stop()


# -- with a real engine ----------------------------------------------------------------------------


def test_a_build_streams_its_steps_and_a_second_build_of_the_same_version_is_skipped(containers):
    platform = containers()
    seen: list[str] = []
    built = platform.build("v1", seen.append)
    assert not built.skipped and built.image_id and built.size
    assert built.detail.startswith(f"built {platform.image}:v1 in ") and built.image_id[:12] in built.detail
    assert any("step " in line for line in seen), seen
    labels = engine_json("image", "inspect", "--format", "{{json .Config.Labels}}", f"{platform.image}:v1")
    assert '"recess.version":"v1"' in labels.replace(" ", "") and f'"recess.service":"{platform.service}"' in labels.replace(" ", "")
    again = platform.build("v1", seen.append)
    assert again.skipped and again.detail.startswith("skipped: ") and "already exists" in again.detail


def test_a_failed_build_raises_with_the_last_lines_of_its_output(containers):
    platform = containers()
    with pytest.raises(PlatformError) as err:
        platform.build("v9-broken")
    assert f"build of {platform.image}:v9-broken exited" in str(err.value)
    assert "this version does not build, on purpose" in err.value.output
    assert len(err.value.output.splitlines()) <= 40
    assert not platform.image_exists("v9-broken")


@needs_haproxy
def test_blue_green_between_two_containers_loses_no_request_of_keep_alive_clients(containers):
    platform = containers()
    for version in ("v1", "v2"):
        platform.build(version)
    platform.start("blue", "v1")
    assert wait_until(lambda: platform.health("blue").ok, timeout=30)
    platform.shift({"blue": 100, "green": 0})
    with Load(platform.settings.listen, clients=8) as load:
        load.wait_until(lambda t: t.by_version["v1"] >= 100, what="answers from v1")
        platform.start("green", "v2")
        assert wait_until(lambda: platform.health("green").ok, timeout=30)
        platform.shift({"blue": 0, "green": 100})
        load.wait_until(lambda t: t.by_version["v2"] >= 100, what="answers from v2")
        platform.shift({"blue": 100, "green": 0})  # the rollback: one router call
        on_v1 = load.by_version["v1"]
        load.wait_until(lambda t: t.by_version["v1"] >= on_v1 + 100, what="answers from v1 after the rollback")
    assert load.failures == []
    assert platform.last_router_call_seconds is not None
    # What runs is read from the engine: a new driver (a restarted bot) sees the same.
    fresh = make_platform(platform_cfg(platform), platform.service, "production")
    traffic = fresh.status()
    assert (traffic.slot("blue").version, traffic.slot("green").version) == ("v1", "v2")
    assert traffic.weights == {"blue": 100, "green": 0} and traffic.serving == "blue"
    # The slot's container: its name, labels, restart policy, and the slot's host address.
    name = f"recess-{platform.service}-production-green"
    assert engine_json("inspect", "--format", "{{.HostConfig.RestartPolicy.Name}}", name).strip() == "unless-stopped"
    labels = engine_json("inspect", "--format", "{{json .Config.Labels}}", name).replace(" ", "")
    for key, value in (("service", platform.service), ("env", "production"), ("slot", "green"), ("version", "v2")):
        assert f'"recess.{key}":"{value}"' in labels
    assert get(platform.settings.slots["green"], "/") == (200, "v2")


def platform_cfg(platform: DockerPlatform):  # noqa: ANN201
    """The config a platform was made from, again (a new process reads the same file)."""
    table = {"services": {platform.service: {"platform": "docker", "health_path": "/health",
                                             "docker": platform.settings.model_dump(exclude_none=True)}}}
    return parse_config(table, base_dir=platform.workdir)


@needs_haproxy
def test_a_container_that_exits_fails_at_once_with_its_exit_code_and_last_log_lines(containers):
    platform = containers()
    platform.build("v3-crash")
    try:
        platform.start("green", "v3-crash")
    except PlatformError as exc:
        text = f"{exc}\n{exc.output}"
    else:
        assert wait_until(lambda: platform.health("green").exited, timeout=30)
        text = platform.health("green").detail
    assert "exit code 3" in text and "cannot reach the database, giving up" in text


@needs_haproxy
def test_stop_refuses_when_another_version_runs_in_the_slot(containers):
    platform = containers()
    platform.build("v1")
    platform.start("blue", "v1")
    with pytest.raises(PlatformError, match="slot blue runs v1, not v2: not stopping it"):
        platform.stop("blue", "v2")
    assert platform.status().slot("blue").running
    platform.stop("blue", "v1")
    assert not platform.status().slot("blue").running
    assert engine_json("ps", "-a", "-q", "--filter", f"label=recess.service={platform.service}").strip() == ""


@needs_haproxy
def test_a_container_sees_its_deploy_and_service_variables_and_never_recess_slack_secrets(containers, monkeypatch):
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-never-in-a-container")
    monkeypatch.setenv("SCHOOL_DB", "postgres://app:pw-from-bot@db/school")
    platform = containers()
    platform.spec = platform.spec.model_copy(update={"env": {"SCHOOL_TZ": "America/Chicago"}, "pass_env": ["SCHOOL_DB"]})
    platform.build("v1")
    platform.start("blue", "v1")
    seen = engine_json("exec", platform.container_name("blue"), "env")
    assert "RECESS_VERSION=v1" in seen and "RECESS_SLOT=blue" in seen and "RECESS_SERVICE=" in seen
    assert "SCHOOL_TZ=America/Chicago" in seen and "SCHOOL_DB=postgres://app:pw-from-bot@db/school" in seen
    assert "xoxb-never-in-a-container" not in seen
    command = engine_json("inspect", "--format", "{{json .Config.CreateCommand}}", platform.container_name("blue"))
    assert "pw-from-bot" not in command  # values travel in the CLI's environment, not its arguments


def test_migrations_run_as_a_one_off_container_of_the_new_image_with_pgoptions(containers):
    platform = containers(migrate=["/bin/sh", "-c", "echo migrating $RECESS_VERSION with $PGOPTIONS"])
    platform.build("v2")
    result = platform.migrate("green", "v2", {"PGOPTIONS": "-c lock_timeout=5s -c statement_timeout=15min"})
    assert result.ok and "migrating v2 with -c lock_timeout=5s -c statement_timeout=15min" in result.output
    assert engine_json("ps", "-a", "-q", "--filter", f"label=recess.service={platform.service}").strip() == ""
    failing = containers(migrate=["/bin/sh", "-c", "echo relation does not exist; exit 4"])
    failing.build("v2")
    bad = failing.migrate("green", "v2", {})
    assert not bad.ok and bad.exit_code == 4 and "relation does not exist" in bad.output


@needs_haproxy
def test_old_images_are_removed_beyond_keep_images_but_never_one_a_slot_runs(containers):
    platform = containers(keep_images=2)
    for version in ("v1", "v2", "v3", "v4"):
        platform.build(version)
    platform.start("blue", "v1")  # the oldest, but running: kept
    removed = platform.prune_images()
    assert removed == ["v2"]
    assert [platform.image_exists(v) for v in ("v1", "v2", "v3", "v4")] == [True, False, True, True]


def test_the_engine_environment_carries_where_the_engine_is_and_no_slack_secret(monkeypatch):
    from platforms.docker import engine_env

    monkeypatch.setenv("DOCKER_HOST", "ssh://deploy@school-web-1")
    monkeypatch.setenv("CONTAINER_HOST", "ssh://deploy@school-web-1/run/podman/podman.sock")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing-secret-value")
    env = engine_env(None)
    assert env["DOCKER_HOST"] == "ssh://deploy@school-web-1" and env["CONTAINER_HOST"].startswith("ssh://")
    assert "SLACK_SIGNING_SECRET" not in env and "signing-secret-value" not in env.values()
    assert os.environ["SLACK_SIGNING_SECRET"] == "signing-secret-value"


# -- recess down -----------------------------------------------------------------------------------


def down_config(tmp_path: Path, service: str) -> tuple[Path, Any]:
    docker = docker_table(tmp_path, service)["services"][service]["docker"]
    slots = docker["slots"]
    (tmp_path / "app").mkdir(exist_ok=True)
    if not (tmp_path / "app" / "Dockerfile").exists():
        (tmp_path / "app" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "recess.toml").write_text(f"""
[services.{service}]
platform = "docker"
health_path = "/health"

[services.{service}.docker]
image = "{docker['image']}"
port = 8000
listen = "{docker['listen']}"
slots = {{ blue = "{slots['blue']}", green = "{slots['green']}" }}
engine = "{docker['engine']}"
build = {{ context = "app" }}
""")
    return tmp_path / "recess.toml", load_config(tmp_path / "recess.toml")


@needs_haproxy
def test_recess_down_stops_both_slots_and_the_router_and_says_so_in_the_audit(containers, tmp_path, capsys):
    from bot.cli import main
    from storage.db import Store

    service = unique("d")
    path, cfg = down_config(tmp_path, service)
    platform = containers(service)  # the same service: the fixture removes what is left
    platform = make_platform(cfg, service, "production")
    for slot, version in (("blue", "v1"), ("green", "v2")):
        platform.build(version)
        platform.start(slot, version)
    platform.shift({"blue": 0, "green": 100})
    assert main(["--config", str(path), "down", service, "--yes"]) == 0
    assert f"{service} in production is down: stopped blue (v1), green (v2)" in capsys.readouterr().out
    traffic = make_platform(cfg, service, "production").status()
    assert not any(s.running for s in traffic.slots.values()) and traffic.serving is None
    assert not platform.router.started() and platform.watch_router() is None  # the watchdog leaves it down
    entry = Store(cfg.database_path).row("SELECT * FROM audit WHERE action = 'service.down'")
    assert entry and entry["command"] == "recess down" and entry["target"] == f"service:{service}/production"


def test_recess_down_is_refused_while_a_deploy_of_the_service_is_open(tmp_path, capsys):
    from bot.cli import main
    from storage import deploys as rows
    from storage.db import Store

    path, cfg = down_config(tmp_path, "core")
    rows.insert(Store(cfg.database_path), service="core", env="production", version="v2", requester="U0ENGINEER1",
                status="running")
    assert main(["--config", str(path), "down", "core", "--yes"]) == 1
    assert "refused: core in production has open deploys: #1 (v2, running)" in capsys.readouterr().err


def test_recess_down_asks_for_confirmation_without_yes(tmp_path, capsys, monkeypatch):
    from bot.cli import main

    path, _ = down_config(tmp_path, "core")
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["--config", str(path), "down", "core"]) == 2
    assert "add --yes" in capsys.readouterr().err


def test_a_rollback_never_builds_an_earlier_version_from_todays_context(containers):
    platform = containers()
    with pytest.raises(PlatformError, match="does not rebuild an earlier version from today's context"):
        platform.build("v1", may_build=False)
    assert not platform.image_exists("v1")
    platform.build("v1")
    assert platform.build("v1", may_build=False).skipped  # there: nothing to build
