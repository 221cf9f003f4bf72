"""End to end with containers: signed /deploy and /rollback against recess, images built by the
deploy's build step, containers run by a real engine (Podman here) behind real HAProxy, and
keep-alive clients counting every answer."""

from __future__ import annotations

import signal

import httpx
import pytest

from storage import deploys as rows
from storage.db import Store
from tests.docker import (
    app_context,
    engine,
    engine_unavailable,
    remove_everything,
    require_engine,
    unique,
)
from tests.harness import ENGINEER, KILLED_BOT_BASE, FakeClock, free_port, write_config
from tests.kit.load import Load
from tests.test_e2e_local import approve, serves, wait_status
from tests.test_window_commands import AFTER_SCHOOL

pytestmark = pytest.mark.e2e


def docker_service(name: str, image: str, listen: int, blue: int, green: int, health_timeout: str = "30s") -> str:
    return f"""
[services.{name}]
platform = "docker"
environments = ["production"]
health_path = "/health"
health_timeout = "{health_timeout}"
keep_images = 3

[services.{name}.docker]
image = "{image}"
port = 8000
listen = "127.0.0.1:{listen}"
slots = {{ blue = "127.0.0.1:{blue}", green = "127.0.0.1:{green}" }}
engine = "{engine()}"
build = {{ context = "app" }}
"""


@pytest.fixture
def service(tmp_path):
    """A fresh docker service's name, image and ports, its build context in the config's folder;
    its containers, images and router are removed afterwards. Each test calls require_engine()
    first: skipped from one line, pytest's summary says why in one line."""
    app_context(tmp_path / "app")
    name = unique("e")
    image = f"localhost/recess-e2e-{name}"
    ports = [free_port() for _ in range(3)]
    made = {"name": name, "image": image, "ports": ports, "public": f"http://127.0.0.1:{ports[0]}"}
    yield made
    from commands.config import load_config
    from platforms import make_platform

    config = tmp_path / "recess.toml"
    if engine_unavailable() is None and config.exists():
        make_platform(load_config(config), name, "production").router.stop()
    if engine_unavailable() is None:
        remove_everything(name, image)


@pytest.fixture
def docker_server(server_factory, service):
    srv = server_factory(docker_service(service["name"], service["image"], *service["ports"]), clock=FakeClock(AFTER_SCHOOL))
    srv.service = service
    return srv


def deploy(srv, version: str, deploy_id: int, statuses: tuple[str, ...] = ("succeeded", "failed")) -> dict:  # noqa: ANN001
    srv.command("/deploy", f"{srv.service['name']} {version}")
    approve(srv, deploy_id)
    return wait_status(srv, deploy_id, statuses, timeout=120)


def step_details(srv, deploy_id: int) -> dict[str, tuple[str, str]]:  # noqa: ANN001
    return {s["name"]: (s["status"], s["detail"] or "") for s in rows.steps(srv.rt.store, deploy_id)}


def test_built_versions_deploy_blue_green_with_no_failed_request_and_roll_back_in_one_click(docker_server, slack):
    require_engine()
    srv = docker_server
    public = srv.service["public"]
    first = deploy(srv, "v1", 1)
    assert first["status"] == "succeeded", first["outcome"]
    built = step_details(srv, 1)["build"]
    assert built[0] == "succeeded" and built[1].startswith(f"built {srv.service['image']}:v1 in ")
    assert httpx.get(public + "/").text.strip() == "v1"

    with Load(public, clients=8) as load:
        load.wait_until(lambda t: t.by_version["v1"] >= 50, what="answers from v1")
        second = deploy(srv, "v2", 2)
        assert second["status"] == "succeeded", second["outcome"]
        assert serves(public, "v2")
        load.wait_until(lambda t: t.by_version["v2"] >= 50, what="answers from v2")
        srv.click("rollback_card", 2, user=ENGINEER, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
        assert serves(public, "v1")
        on_v1 = load.by_version["v1"]
        load.wait_until(lambda t: t.by_version["v1"] >= on_v1 + 50, what="answers from v1 after the rollback")
    assert load.failures == []
    back = wait_status(srv, 3, ("succeeded", "failed"))
    assert back["kind"] == "rollback" and back["status"] == "succeeded" and "after the click" in back["outcome"]
    # The build's progress line and the step's result are in the thread.
    srv.rt.outbox.flush()
    texts = slack.texts() + slack.texts("chat.update")
    assert any(":hammer_and_wrench: build:" in t for t in texts)
    assert any("*build*" in t and "built " in t and "image " in t for t in texts)

    # A redeploy of a version built before: the build step is skipped, saying why.
    again = deploy(srv, "v2", 4)
    assert again["status"] == "succeeded", again["outcome"]
    status, detail = step_details(srv, 4)["build"]
    assert status == "skipped" and "already exists on the engine" in detail
    assert serves(public, "v2")


def test_a_container_that_exits_and_one_never_healthy_both_fail_while_v1_serves(server_factory, service, slack):
    require_engine()
    srv = server_factory(docker_service(service["name"], service["image"], *service["ports"], health_timeout="4s"),
                         clock=FakeClock(AFTER_SCHOOL))
    srv.service = service
    public = service["public"]
    assert deploy(srv, "v1", 1)["status"] == "succeeded"
    with Load(public, clients=4) as load:
        load.wait_until(lambda t: t.total >= 20)
        sick = deploy(srv, "v2-sick", 2)
        crashed = deploy(srv, "v3-crash", 3)
        answered = load.count()
        load.wait_until(lambda t: t.total >= answered + 20, what="answers after both failures")
    assert sick["status"] == "failed" and "did not answer 200" in sick["outcome"]
    assert crashed["status"] == "failed" and "exit code 3" in crashed["outcome"]
    assert load.failures == [] and set(load.by_version) == {"v1"}
    srv.rt.outbox.flush()
    assert any("cannot reach the database, giving up" in t for t in slack.texts())
    from platforms import make_platform

    traffic = make_platform(srv.cfg, service["name"], "production").status()
    assert traffic.live_version == "v1" and [s.running for s in traffic.slots.values()].count(True) == 1


def test_a_failed_build_fails_the_deploy_before_anything_starts(docker_server, slack):
    require_engine()
    srv = docker_server
    assert deploy(srv, "v1", 1)["status"] == "succeeded"
    broken = deploy(srv, "v2-broken", 2)
    assert broken["status"] == "failed" and "build of" in broken["outcome"]
    assert list(step_details(srv, 2)) == ["build"]  # nothing after it ran
    srv.rt.outbox.flush()
    texts = slack.texts()
    assert any("last 40 lines" in t and "this version does not build, on purpose" in t for t in texts)
    assert any("nothing was started and the traffic was not touched" in t.lower() for t in texts)
    assert httpx.get(srv.service["public"] + "/").text.strip() == "v1"
    # '+' passes /deploy (commands/deploys.py VERSION) but is no image tag: refused at build.
    plus = deploy(srv, "v3+build.5", 3)
    assert plus["status"] == "failed" and "is not a valid image tag" in plus["outcome"]
    assert list(step_details(srv, 3)) == ["build"]
    assert httpx.get(srv.service["public"] + "/").text.strip() == "v1"


@pytest.mark.parametrize("version", ["v1/evil", "v" * 129])
def test_a_version_that_is_not_an_image_tag_is_refused_at_deploy_with_usage(docker_server, version):
    srv = docker_server
    answer = srv.command("/deploy", f"{srv.service['name']} {version}")
    assert answer.status_code == 200
    text = answer.json().get("text", "") if answer.headers.get("content-type", "").startswith("application/json") else answer.text
    assert f"`{version}` is not a version" in text
    assert rows.get(srv.rt.store, 1) is None


# -- the bot restarted in the middle of a container deploy -----------------------------------------


@pytest.mark.parametrize(("crash_at", "serving", "status"), [
    ("build", "v1", "failed"),
    ("health", "v1", "failed"),
    ("shift:after", "v2", "succeeded"),
])
def test_bot_killed_during_a_container_deploy_recovers_from_what_the_engine_runs(tmp_path, slack, service, crash_at,
                                                                                  serving, status):
    require_engine()
    from tests.kit.serve import Bot, wait_for

    name, public = service["name"], service["public"]
    config = write_config(tmp_path, docker_service(name, service["image"], *service["ports"]), base=KILLED_BOT_BASE)
    store = Store(config.parent / "recess.db")
    bots: list[Bot] = []
    load = None
    try:
        bots.append(Bot(config, slack.api_url))
        bots[-1].sender.command("/deploy", f"{name} v1")
        wait_for(lambda: (rows.get(store, 1) or {}).get("status") == "succeeded", timeout=120, what="v1 deployed")
        bots[-1].stop()
        load = Load(public, clients=2, pause=0.005).start()
        doomed = Bot(config, slack.api_url, crash_at=crash_at)
        bots.append(doomed)
        try:
            doomed.sender.command("/deploy", f"{name} v2")
        except httpx.HTTPError:
            pass  # the bot may die before it answers: the request is stored first
        wait_for(lambda: doomed.proc.poll() is not None, timeout=120, what="the bot to be killed")
        assert doomed.proc.returncode == -signal.SIGKILL
        bots.append(Bot(config, slack.api_url))
        final = wait_for(lambda: (rows.get(store, 2) or {}).get("status") in ("failed", "succeeded") and rows.get(store, 2),
                         timeout=120, what="recovery to record the outcome")
        answered = load.count()
        load.wait_until(lambda t: t.total >= answered + 20, what="answers after the recovery")
        tally = load.stop()
        load = None
    finally:
        if load is not None:
            load.stop()
        for bot in bots:
            bot.stop()
    assert final["status"] == status, final["outcome"]
    assert tally.failures == []
    assert {httpx.get(public + "/").text.strip() for _ in range(10)} == {serving}
    from commands.config import load_config
    from platforms import make_platform

    traffic = make_platform(load_config(config), name, "production").status()  # read from the engine
    assert sorted(traffic.weights.values()) == [0, 100] and traffic.live_version == serving
    if serving == "v1":
        assert [s.version for s in traffic.slots.values() if s.running] == ["v1"]  # green stopped

