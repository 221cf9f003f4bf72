"""Releases: `[releases.NAME]` deployed, switched and rolled back as one, over signed HTTP against
`recess serve` with the fake Slack; the end-to-end ones with three real `local` services behind
real HAProxy routers."""

from __future__ import annotations

import json
import sys

import pytest

from commands.config import ConfigError, parse_config
from storage import deploys as rows
from tests.fake_platform import FakePlatform
from tests.harness import APPROVER_1, BASE_CONFIG, ENGINEER, FakeClock, free_port
from tests.kit.load import Load
from tests.test_deploy_commands import responses
from tests.test_e2e_local import approve, serves, wait_status
from tests.test_window_commands import AFTER_SCHOOL, reply_text

MEMBERS = ("core", "web", "ai-gateway")

COMMAND_SERVICES = "".join(f"""
[services.{name}]
platform = "command"
environments = {envs}

[services.{name}.command]
start = "true"
stop = "true"
shift = "true"
status = "true"
""" for name, envs in (("core", '["production", "staging"]'), ("web", '["production", "staging"]'),
                       ("ai-gateway", '["production"]'), ("lunch", '["production"]')))

RELEASE = """
[releases.k12]
services = ["core", "web", "ai-gateway"]
migrate_first = "core"
"""


# -- the configuration ------------------------------------------------------------------------------


def config(releases: dict) -> dict:
    service = {"platform": "command", "command": {"start": "true", "stop": "true", "shift": "true", "status": "true"}}
    return {"services": {"core": service, "web": service}, "releases": releases}


@pytest.mark.parametrize(("releases", "message"), [
    ({"core": {"services": ["core", "web"]}}, "releases.core: expected a name no service has"),
    ({"k12": {"services": ["core", "gradebook"]}}, "releases.k12.services: 'gradebook' is not a [services.NAME]"),
    ({"k12": {"services": ["core", "core"]}}, "releases.k12.services: expected each service once, got core twice"),
    ({"k12": {"services": ["core"]}}, "releases.k12.services"),
    ({"k12": {"services": ["core", "web"], "migrate_first": "lunch"}}, "releases.k12.migrate_first: expected one of"),
    ({"k12": {"services": ["core", "web"], "order": 1}}, "releases.k12.order: unknown key"),
    ({"K 12": {"services": ["core", "web"]}}, "releases.K 12: expected a name of [a-z0-9_-]"),
])
def test_a_wrong_release_table_stops_start_up_naming_the_key(releases, message):
    with pytest.raises(ConfigError) as err:
        parse_config(config(releases))
    assert message in str(err.value)


def test_a_release_keeps_its_members_in_the_configured_order():
    cfg = parse_config(config({"k12": {"services": ["web", "core"], "migrate_first": "core"}}))
    assert cfg.releases["k12"].services == ["web", "core"]
    assert cfg.releases["k12"].migrate_first == "core"
    assert cfg.releases_with("core") == ["k12"]


# -- bad input: a usage reply that names the problem, and nothing stored ----------------------------


@pytest.fixture
def release_server(server_factory):
    return server_factory(COMMAND_SERVICES + RELEASE, clock=FakeClock(AFTER_SCHOOL))


@pytest.mark.parametrize(("text", "message"), [
    ("k13 v2", "unknown service `k13`"),
    ("k12 core=v2 gradebook=v2", "`gradebook` is not a member of release k12 (members: core, web, ai-gateway)"),
    ("k12 core=v2 lunch=v2", "`lunch` is not a member of release k12"),
    ("k12 core=v2 core=v3", "`core` is named twice"),
    ("k12 v2 core=v3", "mixes the VERSION and SERVICE=VERSION forms"),
    ("k12 core=v3 v2", "mixes the VERSION and SERVICE=VERSION forms"),
    ("k12 v2 staging", "its member `ai-gateway` is not deployed there"),
    ("k12 core=v2 staging", "its member `ai-gateway` is not deployed there"),
    ("k12 v2 moon", "unknown environment `moon`"),
    ("k12 core=", "names no version"),
    ("k12 core=v2;rm", "is not a version"),
    ("k12", "needs a VERSION for every member"),
    ("k12 v2 production extra", "too many words"),
    ("k12 v2 --canary 50,10", "`--canary` takes rising percentages"),
])
def test_bad_release_requests_get_a_usage_reply_and_store_nothing(release_server, text, message):
    resp = release_server.command("/deploy", text)
    assert resp.status_code == 200
    answer = reply_text(resp)
    assert message in answer and "/deploy RELEASE" in answer
    assert release_server.rt.store.rows("SELECT id FROM deploys") == []


def test_a_release_request_is_one_card_listing_every_member(release_server, slack):
    srv = release_server
    resp = srv.command("/deploy", "k12 core=v2.4.1 web=v2.4.0")
    assert "Release #1 of k12" in reply_text(resp)
    parent = rows.get(srv.rt.store, 1)
    assert parent["kind"] == "release" and parent["release_id"] == 1 and parent["status"] == "pending"
    assert [(m["service"], m["version"]) for m in parent["members"]] == [("core", "v2.4.1"), ("web", "v2.4.0")]
    assert parent["approvals_needed"] == 1
    cards = slack.wait_for(lambda s: [c for c in s.of("chat.postMessage") if "Release #1" in c.params.get("text", "")])
    assert len(cards) == 1
    blocks = json.dumps(cards[0].params["blocks"], ensure_ascii=False)
    assert "*core* nothing → *v2.4.1*" in blocks and "*web* nothing → *v2.4.0*" in blocks and "ai-gateway" not in blocks
    assert "deploy_approve" in blocks
    # Asking again for the same versions is refused; nothing more is stored.
    again = reply_text(srv.command("/deploy", "k12 core=v2.4.1 web=v2.4.0"))
    assert "already requested as deploy #1" in again
    assert len(srv.rt.store.rows("SELECT id FROM deploys")) == 1


def test_history_of_a_release_lists_it_with_its_members(release_server):
    srv = release_server
    srv.command("/deploy", "k12 v3")
    text = json.dumps(srv.command("/deploy", "history k12").json(), ensure_ascii=False)
    assert "#1 k12 release: core nothing → *v3*, web nothing → *v3*, ai-gateway nothing → *v3*" in text


# -- end to end: three local services behind real HAProxy routers -----------------------------------


def local_services(health_timeout: str = "15s", core_migrate: str = "true") -> tuple[str, dict[str, str]]:
    text, public = "", {}
    for name in MEMBERS:
        listen, blue, green = (free_port() for _ in range(3))
        public[name] = f"http://127.0.0.1:{listen}"
        migrate = f'migrate = "{core_migrate}"\n' if name == "core" else ""
        text += f"""
[services.{name}]
platform = "local"
environments = ["production"]
health_path = "/api/v1/health"
health_timeout = "{health_timeout}"

[services.{name}.local]
listen = "127.0.0.1:{listen}"
slots = {{ blue = "127.0.0.1:{blue}", green = "127.0.0.1:{green}" }}
run = "{sys.executable} -m demo.app --port {{port}} --version {{version}}"
{migrate}"""
    return text + RELEASE, public


@pytest.fixture
def local_release(server_factory):
    made = []

    def make(bake: str = "0s", **kw):  # noqa: ANN003
        text, public = local_services(**kw)
        base = BASE_CONFIG.replace('bake_time = "0s"', f'bake_time = "{bake}"', 1)  # production's
        srv = server_factory(text, clock=FakeClock(AFTER_SCHOOL), base=base)
        srv.public = public
        made.append(srv)
        return srv

    yield make
    from platforms import make_platform

    for srv in made:
        for name in MEMBERS:
            make_platform(srv.cfg, name, "production").shutdown()


def deploy_release(srv, text: str, parent_id: int, statuses=("succeeded", "failed", "rolled_back")) -> dict:  # noqa: ANN001
    srv.command("/deploy", text)
    approve(srv, parent_id)
    return wait_status(srv, parent_id, statuses, timeout=120)


def all_serve(srv, version: str | dict[str, str]) -> bool:  # noqa: ANN001
    wanted = version if isinstance(version, dict) else dict.fromkeys(MEMBERS, version)
    return all(serves(srv.public[name], wanted[name]) for name in MEMBERS)


@pytest.mark.e2e
def test_a_release_deploys_every_member_switches_them_together_and_rolls_back_in_one_click(local_release, slack):
    srv = local_release()
    first = deploy_release(srv, "k12 v1", 1)
    assert first["status"] == "succeeded", first["outcome"]
    assert all_serve(srv, "v1")
    members = rows.members(srv.rt.store, first)
    assert [m["service"] for m in members] == list(MEMBERS) and {m["status"] for m in members} == {"succeeded"}

    loads = [Load(srv.public[name], clients=3).start() for name in MEMBERS]
    try:
        for load in loads:
            load.wait_until(lambda t: t.by_version["v1"] >= 20, what="answers from v1")
        release = deploy_release(srv, "k12 v2", 5)
        assert release["status"] == "succeeded", release["outcome"]
        assert "flips" in release["outcome"]
        assert all_serve(srv, "v2")
        members = rows.members(srv.rt.store, release)
        # core's migrations ran before any green started; every member kept its previous version.
        core_steps = rows.steps(srv.rt.store, members[0]["id"])
        first_start = min(s["id"] for m in members for s in rows.steps(srv.rt.store, m["id"]) if s["name"] == "start_green")
        assert next(s for s in core_steps if s["name"] == "migrate")["id"] < first_start
        assert all(m["previous_version"] == "v1" and m["blue_version"] == "v1" for m in members)
        assert [rows.live(srv.rt.store, name, "production")["id"] for name in MEMBERS] == [m["id"] for m in members]
        slack.wait_for(lambda s: any("first to last flip" in t and "3 flips back to back" in t for t in s.texts()))
        slack.wait_for(lambda s: any("*web*: :white_check_mark: *health*" in t for t in s.texts()))

        # core alone, the old way: the release's card says core was rolled back on its own.
        srv.rt.outbox.flush()
        preview = json.dumps(srv.command("/rollback", "core").json())
        assert "rollback_start" in preview
        srv.click("rollback_start", members[0]["id"], user=ENGINEER)
        assert serves(srv.public["core"], "v1")
        wait_status(srv, members[0]["id"], ("rolled_back",))
        slack.wait_for(lambda s: any("core was rolled back on its own" in json.dumps(c.params.get("blocks"))
                                     for c in s.of("chat.update")))

        # The whole release: web and ai-gateway go back together; core is left as it is.
        text = json.dumps(srv.command("/rollback", "k12").json(), ensure_ascii=False)
        assert "core was rolled back on its own" in text and "*ai-gateway* v2 → *v1*" in text
        srv.click("rollback_start", 5, user=ENGINEER)
        rollback = wait_status(srv, 10, ("succeeded", "failed"))
        assert rollback["kind"] == "rollback" and rollback["status"] == "succeeded", rollback["outcome"]
        assert "after the click" in rollback["outcome"]
        assert all_serve(srv, "v1")
        for load in loads:
            seen = load.count()
            load.wait_until(lambda t, seen=seen: t.total >= seen + 20, what="answers after the rollback")
    finally:
        for load in loads:
            load.stop()
    assert [load.failures for load in loads] == [[], [], []]
    assert rows.get(srv.rt.store, 5)["status"] == "rolled_back"
    back = rows.members(srv.rt.store, rollback)
    assert [m["service"] for m in back] == ["ai-gateway", "web"]  # reverse order
    slack.wait_for(lambda s: any("Release k12 rolled back" in t for t in s.texts()))


@pytest.mark.e2e
def test_one_unhealthy_member_fails_the_release_before_any_switch(local_release, slack):
    srv = local_release(health_timeout="4s")
    assert deploy_release(srv, "k12 v1", 1)["status"] == "succeeded"
    with Load(srv.public["core"], clients=2) as load:
        failed = deploy_release(srv, "k12 core=v2 web=v2+unhealthy ai-gateway=v2", 5)
        load.wait_until(lambda t: t.total >= 20)
    assert failed["status"] == "failed" and "did not answer 200" in failed["outcome"]
    assert all_serve(srv, "v1")
    assert load.failures == [] and set(load.by_version) == {"v1"}
    from platforms import make_platform

    for m in rows.members(srv.rt.store, failed):
        assert m["status"] == "failed" and m["traffic_at"] is None
        traffic = make_platform(srv.cfg, m["service"], "production").status()
        assert traffic.live_version == "v1" and not traffic.slot(m["green_slot"]).running  # every green stopped
    slack.wait_for(lambda s: any("release #5 of k12: failed" in t for t in s.texts()))


@pytest.mark.e2e
def test_one_member_failing_in_the_bake_switches_every_member_back(local_release, slack):
    # ai-gateway's v2 turns bad 6 s after it starts: after health and smoke, during the 15 s bake.
    srv = local_release(bake="15s")
    assert deploy_release(srv, "k12 v1", 1)["status"] == "succeeded"
    with Load(srv.public["web"], clients=2) as load:
        final = deploy_release(srv, "k12 core=v2 web=v2 ai-gateway=v2+fails-after-6", 5)
        seen = load.count()
        load.wait_until(lambda t: t.total >= seen + 20)
    assert final["status"] == "rolled_back" and "ai-gateway" in final["outcome"], final["outcome"]
    assert all_serve(srv, "v1")
    assert load.failures == []
    assert {m["status"] for m in rows.members(srv.rt.store, final)} == {"rolled_back"}
    slack.wait_for(lambda s: any("automatic rollback" in t and "flipped back together" in t for t in s.texts()))
    assert rows.live(srv.rt.store, "web", "production")["version"] == "v1"


def test_one_approval_runs_the_whole_release_through_every_member(release_server, slack):
    srv = release_server
    fakes = {name: FakePlatform(name) for name in (*MEMBERS, "lunch")}
    srv.rt.extras["platform_factory"] = lambda cfg, service, env: fakes[service]
    srv.command("/deploy", "k12 v2", user=ENGINEER)
    srv.rt.outbox.flush()
    srv.click("deploy_approve", 1, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 1)["card_ts"])
    parent = wait_status(srv, 1, ("succeeded", "failed"))
    assert parent["status"] == "succeeded", parent["outcome"]
    assert [m["status"] for m in rows.members(srv.rt.store, parent)] == ["succeeded"] * 3
    assert len(rows.approvers(srv.rt.store, 1)) == 1  # one approval for the whole release
    assert all(f.weights == {"blue": 100, "green": 0} and f.versions["blue"] == "v2" for n, f in fakes.items() if n != "lunch")
    assert fakes["lunch"].calls == []


def test_a_flip_together_refused_for_one_member_flips_none_of_them():
    from commands.traffic import Move, TrafficDoor, TrafficRefused

    fakes = {name: FakePlatform(name, live="v1") for name in MEMBERS}
    for fake in fakes.values():
        fake.start("green", "v2")
    fakes["web"].fail.update({"health": "down", "health_slot": "green"})
    door = TrafficDoor(lambda service, env: fakes[service], sleep=lambda s: None)
    with pytest.raises(TrafficRefused) as refused:
        door.route_together([Move(name, "production", "green", "v2") for name in MEMBERS])
    assert str(refused.value).startswith("web: slot green (v2) is not healthy")
    assert all(f.weights == {"blue": 100, "green": 0} for f in fakes.values())
    assert not any(call[0] == "shift" for f in fakes.values() for call in f.calls)
    fakes["web"].fail.clear()
    together = door.route_together([Move(name, "production", "green", "v2") for name in MEMBERS])
    assert [f.service for f in together.flips] == list(MEMBERS)
    assert all(f.weights == {"blue": 0, "green": 100} for f in fakes.values())


def test_a_release_waits_for_a_member_held_by_its_own_deploy_and_starts_when_it_is_free(release_server, slack):
    srv = release_server
    fakes = {name: FakePlatform(name) for name in (*MEMBERS, "lunch")}
    srv.rt.extras["platform_factory"] = lambda cfg, service, env: fakes[service]
    held = rows.insert(srv.rt.store, service="web", env="production", version="v9", requester=ENGINEER, status="running",
                       started_at=AFTER_SCHOOL)
    srv.rt.extras["deployer"].running_here.add(held)  # driven by "someone": the watchdog leaves it alone
    srv.command("/deploy", "k12 core=v2 web=v2")
    srv.rt.outbox.flush()
    srv.click("deploy_approve", 2, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 2)["card_ts"])
    parent = wait_status(srv, 2, ("approved",))
    assert rows.members(srv.rt.store, parent) == []  # nothing started: web is held
    slack.wait_for(lambda s: any("Waits for deploy #1" in t for t in s.texts()))
    from commands.states import move

    move(srv.rt.store, held, "running", "failed", outcome="done")
    srv.rt.extras["deployer"].start_waiting()
    final = wait_status(srv, 2, ("succeeded", "failed"))
    assert final["status"] == "succeeded", final["outcome"]
    assert [m["service"] for m in rows.members(srv.rt.store, final)] == ["core", "web"]


def live_fakes(srv) -> dict[str, FakePlatform]:  # noqa: ANN001
    """Every member serving v1 from slot blue, as recess recorded it."""
    import datetime as dt

    fakes = {name: FakePlatform(name, live="v1") for name in (*MEMBERS, "lunch")}
    srv.rt.extras["platform_factory"] = lambda cfg, service, env: fakes[service]
    for name in MEMBERS:
        rows.insert(srv.rt.store, service=name, env="production", version="v1", requester=ENGINEER, status="succeeded",
                    traffic_at=dt.datetime(2027, 1, 1, tzinfo=dt.UTC), blue_retired=1)
    return fakes


def test_canary_steps_move_every_member_to_the_same_weights_together(release_server, slack):
    srv = release_server
    fakes = live_fakes(srv)
    srv.command("/deploy", "k12 v2 --canary 10,50")
    srv.rt.outbox.flush()
    srv.click("deploy_approve", 4, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 4)["card_ts"])
    final = wait_status(srv, 4, ("succeeded", "failed"))
    assert final["status"] == "succeeded", final["outcome"]
    for name in MEMBERS:
        shifts = [call[1] for call in fakes[name].calls if call[0] == "shift"]
        assert shifts == [{"green": 10, "blue": 90}, {"green": 50, "blue": 50}, {"green": 100, "blue": 0}]
    slack.wait_for(lambda s: any("canary: 50% of every member's traffic" in t for t in s.texts()))


def test_stop_on_a_release_card_stops_every_green_and_leaves_every_blue_serving(release_server, slack):
    srv = release_server
    fakes = live_fakes(srv)
    fakes["ai-gateway"].fail.update({"health": "starting", "health_slot": "green"})  # never healthy: the run waits
    srv.command("/deploy", "k12 v2")
    srv.rt.outbox.flush()
    srv.click("deploy_approve", 4, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 4)["card_ts"])
    slack.wait_for(lambda s: any("*web*: :white_check_mark: *health*" in t for t in s.texts()), timeout=30)
    srv.click("deploy_stop", 4, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 4)["card_ts"])
    final = wait_status(srv, 4, ("failed", "succeeded"))
    assert final["status"] == "failed" and "stopped by" in final["outcome"]
    for name in MEMBERS:
        assert fakes[name].weights == {"blue": 100, "green": 0} and not fakes[name].running["green"], name
    assert {m["status"] for m in rows.members(srv.rt.store, final)} == {"failed"}
    # Every member is free again: core alone can be deployed at once.
    assert "Deploy #" in reply_text(srv.command("/deploy", "core v3"))


@pytest.mark.e2e
def test_a_release_whose_previous_versions_were_retired_rolls_back_through_the_pipeline(local_release, slack):
    srv = local_release()
    assert deploy_release(srv, "k12 v1", 1)["status"] == "succeeded"
    assert deploy_release(srv, "k12 v2", 5)["status"] == "succeeded"
    deployer = srv.rt.extras["deployer"]
    for m in rows.members(srv.rt.store, rows.get(srv.rt.store, 5)):
        deployer.retire_blue(m)  # past keep_blue: every v1 is stopped
        assert rows.get(srv.rt.store, m["id"])["blue_retired"] == 1
    preview = json.dumps(srv.command("/rollback", "k12").json(), ensure_ascii=False)
    assert "redeployed blue-green through the release pipeline" in preview
    with Load(srv.public["core"], clients=2) as load:
        srv.click("rollback_start", 5, user=ENGINEER)
        rollback = wait_status(srv, 9, ("succeeded", "failed", "rolled_back"), timeout=120)
        seen = load.count()
        load.wait_until(lambda t: t.total >= seen + 20)
    assert rollback["kind"] == "rollback" and rollback["status"] == "succeeded", rollback["outcome"]
    assert all_serve(srv, "v1") and load.failures == []
    assert rows.get(srv.rt.store, 5)["status"] == "rolled_back"
    back = rows.members(srv.rt.store, rollback)
    assert [m["service"] for m in back] == ["ai-gateway", "web", "core"]
    assert all(m["status"] == "succeeded" and m["version"] == "v1" for m in back)
    assert {rows.get(srv.rt.store, m["rollback_of"])["status"] for m in back} == {"rolled_back"}


# -- undo rollback: the release's card offers it after a release rollback ----------------------------


def release_then_rollback(srv, slack, user: str = ENGINEER):  # noqa: ANN001, ANN201
    """Every member on v1 (blue), release #4 puts v2 on green, release rollback #8 puts v1 back."""
    fakes = live_fakes(srv)
    srv.command("/deploy", "k12 v2")
    approve(srv, 4)
    assert wait_status(srv, 4, ("succeeded", "failed"))["status"] == "succeeded"
    srv.click("rollback_start", 4, user=user)
    rollback = wait_status(srv, 8, ("succeeded", "failed"))
    assert rollback["kind"] == "rollback" and rollback["status"] == "succeeded", rollback["outcome"]
    assert all(fakes[name].weights == {"blue": 100, "green": 0} for name in MEMBERS)
    return fakes, rollback


def card_buttons(slack, card_ts: str) -> list[dict]:  # noqa: ANN001
    """The buttons of the card's latest update, as Slack shows them."""
    updates = [c for c in slack.of("chat.update") if c.params.get("ts") == card_ts]
    if not updates:
        return []
    return [e for b in updates[-1].params["blocks"] if b["type"] == "actions" for e in b["elements"]]


def undo_button(slack, card_ts: str) -> dict | None:  # noqa: ANN001
    return next((b for b in card_buttons(slack, card_ts) if b["text"]["text"] == "Undo rollback"), None)


def test_the_release_card_offers_undo_rollback_which_puts_every_member_back_in_release_order(release_server, slack):
    srv = release_server
    fakes, rollback = release_then_rollback(srv, slack)
    card_ts = rollback["card_ts"]
    button = slack.wait_for(lambda s: undo_button(s, card_ts))
    assert button["action_id"] == "rollback_card" and button["value"] == f"8:{rollback['click_token']}"
    assert button["confirm"]["confirm"]["text"] == "Undo rollback"
    assert "v2" in button["confirm"]["text"]["text"]
    typed = json.dumps(srv.command("/rollback", "k12").json(), ensure_ascii=False)  # the same undo, as a preview
    assert "Undo rollback #8* of release k12 in production, in the release's order" in typed and "*core* v1 → *v2*" in typed
    for fake in fakes.values():
        fake.calls.clear()

    srv.sender.action("rollback_card", button["value"], user=ENGINEER, message_ts=card_ts)
    undo = wait_status(srv, 12, ("succeeded", "failed"))
    assert undo["kind"] == "rollback" and undo["rollback_of"] == 8 and undo["status"] == "succeeded", undo["outcome"]
    assert all(fakes[name].weights == {"blue": 0, "green": 100} and fakes[name].versions["green"] == "v2" for name in MEMBERS)
    # In the release's order (the rollback went in reverse), each flip's time and the spread reported.
    back = rows.members(srv.rt.store, undo)
    assert [(m["service"], m["version"], m["status"]) for m in back] == [(n, "v2", "succeeded") for n in MEMBERS]
    assert "3 flips back to back (core " in undo["outcome"] and ", web " in undo["outcome"]
    assert undo["outcome"].index("web") < undo["outcome"].index("ai-gateway") and "first to last flip" in undo["outcome"]
    shifts = [(name, i) for name in MEMBERS for i, c in enumerate(fakes[name].calls) if c[0] == "shift"]
    assert [name for name, _ in shifts] == list(MEMBERS)
    assert [rows.live(srv.rt.store, name, "production")["id"] for name in MEMBERS] == [m["id"] for m in back]
    assert rows.get(srv.rt.store, 8)["status"] == "rolled_back"
    assert {m["status"] for m in rows.members(srv.rt.store, rollback)} == {"rolled_back"}
    slack.wait_for(lambda s: any("Rollback of release k12 undone" in t and "first to last flip" in t for t in s.texts()))
    # The card now offers to roll the release back again, and nothing else.
    slack.wait_for(lambda s: [b["text"]["text"] for b in card_buttons(s, card_ts)] == ["Roll back"])
    typed = json.dumps(srv.command("/rollback", "k12").json(), ensure_ascii=False)
    assert "Roll back release k12 in production* (#12), in reverse order" in typed and "Undo" not in typed


def test_a_stale_or_forged_undo_rollback_click_is_refused_and_changes_nothing(server_factory, slack):
    # Only approvers roll production back here, so the engineer's click is refused too.
    base = BASE_CONFIG.replace("approvals = 1\n", 'approvals = 1\nrollback_by = "approvers"\n', 1)
    srv = server_factory(COMMAND_SERVICES + RELEASE, clock=FakeClock(AFTER_SCHOOL), base=base)
    fakes, rollback = release_then_rollback(srv, slack, user=APPROVER_1)
    card_ts = rollback["card_ts"]
    button = slack.wait_for(lambda s: undo_button(s, card_ts))
    count = len(srv.rt.store.rows("SELECT id FROM deploys"))

    srv.sender.action("rollback_card", "8:not-the-token", user=APPROVER_1, message_ts=card_ts)
    slack.wait_for(lambda s: "does not belong to deploy #8's card" in responses(s))
    srv.sender.action("rollback_card", button["value"], user=ENGINEER, message_ts=card_ts)
    slack.wait_for(lambda s: "only approvers can roll back production" in responses(s))
    assert len(srv.rt.store.rows("SELECT id FROM deploys")) == count
    assert all(fakes[name].weights == {"blue": 100, "green": 0} for name in MEMBERS)

    srv.sender.action("rollback_card", button["value"], user=APPROVER_1, message_ts=card_ts)
    assert wait_status(srv, 12, ("succeeded", "failed"))["status"] == "succeeded"
    count = len(srv.rt.store.rows("SELECT id FROM deploys"))
    srv.sender.action("rollback_card", button["value"], user=APPROVER_1, message_ts=card_ts)  # the same click again
    slack.wait_for(lambda s: "rollback #8 of release k12 was already undone" in responses(s))
    assert len(srv.rt.store.rows("SELECT id FROM deploys")) == count
    assert all(fakes[name].weights == {"blue": 0, "green": 100} for name in MEMBERS)


def test_undo_rollback_is_refused_when_a_member_was_deployed_on_its_own_since(release_server, slack):
    srv = release_server
    fakes, rollback = release_then_rollback(srv, slack)
    card_ts = rollback["card_ts"]
    button = slack.wait_for(lambda s: undo_button(s, card_ts))
    srv.command("/deploy", "web v3")
    approve(srv, 12)
    assert wait_status(srv, 12, ("succeeded", "failed"))["status"] == "succeeded"
    count = len(srv.rt.store.rows("SELECT id FROM deploys"))

    srv.sender.action("rollback_card", button["value"], user=ENGINEER, message_ts=card_ts)
    slack.wait_for(lambda s: "web changed since release rollback #8: deploy #12 (v3) is live" in responses(s))
    assert len(srv.rt.store.rows("SELECT id FROM deploys")) == count
    assert fakes["web"].versions[fakes["web"].serving] == "v3"
    assert all(fakes[name].weights == {"blue": 100, "green": 0} for name in ("core", "ai-gateway"))
    assert rows.get(srv.rt.store, 8)["status"] == "succeeded"


@pytest.mark.e2e
def test_undo_rollback_on_the_release_card_puts_every_member_back_behind_real_haproxy(local_release, slack):
    srv = local_release()
    assert deploy_release(srv, "k12 v1", 1)["status"] == "succeeded"
    assert deploy_release(srv, "k12 v2", 5)["status"] == "succeeded"
    srv.click("rollback_start", 5, user=ENGINEER)
    rollback = wait_status(srv, 9, ("succeeded", "failed"))
    assert rollback["status"] == "succeeded", rollback["outcome"]
    assert all_serve(srv, "v1")
    srv.rt.outbox.flush()
    button = slack.wait_for(lambda s: undo_button(s, rollback["card_ts"]))
    loads = [Load(srv.public[name], clients=3).start() for name in MEMBERS]
    try:
        for load in loads:
            load.wait_until(lambda t: t.by_version["v1"] >= 20, what="answers from v1")
        srv.sender.action("rollback_card", button["value"], user=ENGINEER, message_ts=rollback["card_ts"])
        undo = wait_status(srv, 13, ("succeeded", "failed"))
        assert undo["status"] == "succeeded" and undo["rollback_of"] == 9, undo["outcome"]
        assert "3 flips back to back (core " in undo["outcome"] and "first to last flip" in undo["outcome"]
        assert all_serve(srv, "v2")
        for load in loads:
            seen = load.count()
            load.wait_until(lambda t, seen=seen: t.total >= seen + 20, what="answers after the undo")
    finally:
        for load in loads:
            load.stop()
    assert [load.failures for load in loads] == [[], [], []]
    assert [m["service"] for m in rows.members(srv.rt.store, undo)] == list(MEMBERS)
    slack.wait_for(lambda s: any("Rollback of release k12 undone" in t for t in s.texts()))
