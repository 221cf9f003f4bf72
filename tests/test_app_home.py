"""App Home as the deploy dashboard: content, Slack's limits, flag toggles, sign-in, refresh."""

from __future__ import annotations

import datetime as dt
import json
import time

import httpx
from slack_sdk.models.views import View

from bot.listeners import home
from commands.flags import FlagBook
from storage import audit
from storage import deploys as rows
from tests.harness import APPROVER_1, APPROVER_2, ENGINEER, FAKE_SERVICE, FakeClock
from tests.test_window_commands import AFTER_SCHOOL

NO_REFRESH = '\n[dashboard]\nhome_refresh = "0s"\n'


def published_to(slack, user: str, since: int = 0) -> list[dict]:  # noqa: ANN001
    views = []
    for call in slack.of("views.publish")[since:]:
        if call.params.get("user_id") == user:
            view = call.params["view"]
            views.append(json.loads(view) if isinstance(view, str) else view)
    return views


def text_of(view: dict) -> str:
    return json.dumps(view, ensure_ascii=False)


def open_home(srv, slack, user: str, event_id: str) -> dict:  # noqa: ANN001
    seen = len(published_to(slack, user))
    srv.sender.event({"type": "app_home_opened", "user": user, "channel": "D1", "tab": "home"}, event_id=event_id)
    slack.wait_for(lambda s: len(published_to(s, user)) > seen)
    return published_to(slack, user)[-1]


def many_services(n: int) -> str:
    return "".join(f'''
[services.svc{i:02d}]
platform = "command"
[services.svc{i:02d}.command]
start = "true"
stop = "true"
shift = "true"
status = "true"
''' for i in range(n))


def test_app_home_stays_within_slacks_limits_at_20_services_and_50_flags(server_factory):
    flags = "".join(f"flag_{i:02d}_with_a_long_descriptive_name = {'true' if i % 2 else 'false'}\n" for i in range(50))
    from tests.harness import BASE_CONFIG

    base = BASE_CONFIG.replace("portfolio_enabled = true\n", "portfolio_enabled = true\n" + flags)
    release = '\n[releases.all20]\nservices = [' + ", ".join(f'"svc{i:02d}"' for i in range(20)) + ']\n'
    srv = server_factory(many_services(20) + release + NO_REFRESH, clock=FakeClock(AFTER_SCHOOL), base=base)
    store = srv.rt.store
    for i in range(20):
        for env in ("production", "staging"):
            rows.insert(store, service=f"svc{i:02d}", env=env, version=f"v{i}.0.0-build.{i * 1000}", requester=ENGINEER,
                        status="succeeded", traffic_at=AFTER_SCHOOL - dt.timedelta(hours=i + 1), blue_version=f"v{i}.0.0-prev",
                        blue_retired=0, blue_retire_at=AFTER_SCHOOL + dt.timedelta(minutes=20))
        rows.insert(store, service=f"svc{i:02d}", env="production", version=f"v{i}.1", requester=ENGINEER,
                    status=("pending", "queued", "running")[i % 3], queued_until=AFTER_SCHOOL + dt.timedelta(hours=1))
    for n in range(10):  # ten releases of all twenty services: the longest lines Recent shows
        plan = [{"service": f"svc{i:02d}", "version": f"v{i}.{n + 1}.0-build.{i * 1000}",
                 "previous_version": f"v{i}.{n}.0-build.{i * 1000}"} for i in range(20)]
        parent = seed_release(store, "all20", plan, status="succeeded", traffic_at=AFTER_SCHOOL - dt.timedelta(days=2, hours=n))
        assert rows.is_release(rows.get(store, parent))
    for viewer in (APPROVER_1, ENGINEER):
        view = home.home_view(srv.rt, viewer, "America/New_York")
        View(**view).to_dict()  # slack_sdk checks the Home tab's own limits (100 blocks)
        assert len(view["blocks"]) <= 100
        assert len(json.dumps(view).encode()) <= 250_000
        text = text_of(view)
        assert "svc19" in text and "v19.0.0-build.19000" in text and "kept v0.0.0-prev until" in text
        assert "Recent deploys" in text and "release all20: svc00 v0.0.0-build.0 → v0.1.0-build.0" in text
    admin = text_of(home.home_view(srv.rt, APPROVER_1, "America/New_York"))
    assert "waiting on you" in admin
    shown = admin.count('"radio_buttons"')
    assert shown == 52 or (shown >= 30 and "more flags: the web dashboard" in admin)  # what does not fit says where it is


def seed_release(store, name: str, plan: list[dict], *, status: str, env: str = "production", **values) -> int:  # noqa: ANN001, ANN003
    """A release's parent row and, once it started, one member row per service, as a release writes them."""
    started = values.get("started_at")
    parent = rows.insert(store, kind="release", service=name, env=env, version="see members", requester=ENGINEER,
                         status=status, members=plan, **values)
    rows.update(store, parent, release_id=parent)
    if status not in ("pending", "approved", "queued"):
        for m in plan:
            rows.insert(store, kind="deploy", service=m["service"], env=env, version=m["version"],
                        previous_version=m["previous_version"], requester=ENGINEER, status=status, release_id=parent,
                        started_at=started, traffic_at=values.get("traffic_at"), finished_at=values.get("finished_at"))
    return parent


def test_app_home_shows_live_kept_waiting_on_the_viewer_first_safe_until_and_recent(server_factory, slack):
    srv = server_factory(FAKE_SERVICE + NO_REFRESH, clock=FakeClock(AFTER_SCHOOL))
    rows.insert(srv.rt.store, service="web", env="production", version="v2", previous_version="v1", requester=ENGINEER,
                status="succeeded", traffic_at=AFTER_SCHOOL - dt.timedelta(minutes=10), blue_version="v1", blue_retired=0,
                blue_retire_at=AFTER_SCHOOL + dt.timedelta(minutes=20), started_at=AFTER_SCHOOL - dt.timedelta(minutes=12),
                finished_at=AFTER_SCHOOL - dt.timedelta(minutes=10))
    other = rows.insert(srv.rt.store, service="web", env="staging", version="v4", requester=APPROVER_2, status="pending",
                        channel="C0DEPLOYS", card_ts="1800000002.000100")
    mine = rows.insert(srv.rt.store, service="web", env="production", version="v3", requester=ENGINEER, status="pending",
                       channel="C0DEPLOYS", card_ts="1800000001.000100")
    text = text_of(open_home(srv, slack, APPROVER_2, "EvH1"))
    assert "*v2* since" in text and "kept v1 until" in text
    assert text.index(f"|#{mine}>") < text.index(f"|#{other}>")  # the one APPROVER_2 may approve comes first
    assert "waiting on you" in text and "https://slack.com/archives/C0DEPLOYS/p1800000001000100" in text
    assert "Safe to deploy now" in text and "when lincoln-high starts school" in text
    assert "2 min" in text  # the last deploy's duration


def test_a_flag_admin_toggles_a_flag_for_one_school_from_app_home(server_factory, slack):
    srv = server_factory(FAKE_SERVICE + NO_REFRESH, clock=FakeClock(AFTER_SCHOOL))
    open_home(srv, slack, APPROVER_1, "EvH2")
    seen = len(published_to(slack, APPROVER_1))
    srv.sender.action(home.FLAG_TOGGLE_ACTION, "", user=APPROVER_1, selected="on", home=True,
                      block_id="flag|la-elementary|ai_safety_v2")
    slack.wait_for(lambda s: len(published_to(s, APPROVER_1)) > seen)
    assert "`ai_safety_v2` is on for la-elementary" in text_of(published_to(slack, APPROVER_1)[-1])
    book = FlagBook.for_store(srv.rt.store)
    assert book.evaluate("ai_safety_v2", "u1", tenant="la-elementary").value is True
    assert book.evaluate("ai_safety_v2", "u1", tenant="lincoln-high").value is False
    entry = audit.entries(srv.rt.store, target="flag:ai_safety_v2")[0]
    assert entry["actor"] == APPROVER_1 and entry["command"].startswith("App Home:")
    slack.wait_for(lambda s: any("ai_safety_v2" in t and "la-elementary" in t for t in s.texts()))


def test_app_home_refuses_a_toggle_from_someone_who_is_not_a_flag_admin(server_factory, slack):
    srv = server_factory(FAKE_SERVICE + NO_REFRESH, clock=FakeClock(AFTER_SCHOOL))
    view = open_home(srv, slack, ENGINEER, "EvH3")
    assert '"radio_buttons"' not in text_of(view) and "ai_safety_v2" in text_of(view)
    seen = len(published_to(slack, ENGINEER))
    srv.sender.action(home.FLAG_TOGGLE_ACTION, "", user=ENGINEER, selected="on", home=True,
                      block_id="flag|la-elementary|ai_safety_v2")
    slack.wait_for(lambda s: len(published_to(s, ENGINEER)) > seen)
    assert "only flag admins" in text_of(published_to(slack, ENGINEER)[-1])
    assert FlagBook.for_store(srv.rt.store).evaluate("ai_safety_v2", "u1", tenant="la-elementary").value is False


def test_app_home_button_shows_the_viewer_a_one_time_sign_in_link(server_factory, slack):
    srv = server_factory(FAKE_SERVICE + NO_REFRESH, clock=FakeClock(AFTER_SCHOOL))
    open_home(srv, slack, ENGINEER, "EvH4")
    seen = len(published_to(slack, ENGINEER))
    srv.sender.action(home.LINK_ACTION, "open", user=ENGINEER, home=True, block_id="home_links")
    slack.wait_for(lambda s: len(published_to(s, ENGINEER)) > seen)
    text = text_of(published_to(slack, ENGINEER)[-1])
    link = text.split("<", 1)[1].split("|Open the web dashboard>", 1)[0]
    assert link.startswith(f"{srv.url}/dashboard/signin?token=")
    token = link.split("token=", 1)[1]
    assert httpx.post(f"{srv.url}/dashboard/signin", data={"token": token}).status_code == 303
    assert httpx.post(f"{srv.url}/dashboard/signin", data={"token": token}).status_code == 401


def test_app_home_is_republished_to_recent_viewers_only_when_something_changed(server_factory, slack):
    srv = server_factory(FAKE_SERVICE + NO_REFRESH, clock=FakeClock(AFTER_SCHOOL))
    open_home(srv, slack, APPROVER_1, "EvH5")
    open_home(srv, slack, ENGINEER, "EvH6")
    clock = [time.monotonic()]
    assert home.refresh(srv.rt, monotonic=lambda: clock[0]) == 2  # first pass: everything is new
    assert home.refresh(srv.rt, monotonic=lambda: clock[0]) == 0  # nothing changed: nothing sent
    srv.command("/flag", "on portfolio_enabled tenant=lincoln-high", user=APPROVER_1)
    before = len(slack.of("views.publish"))
    assert home.refresh(srv.rt, monotonic=lambda: clock[0]) == 2
    assert len(slack.of("views.publish")) == before + 2
    clock[0] += 16 * 60  # nobody opened it in the last 15 minutes
    srv.command("/flag", "off portfolio_enabled tenant=lincoln-high", user=APPROVER_1)
    assert home.refresh(srv.rt, monotonic=lambda: clock[0]) == 0


# -- releases --------------------------------------------------------------------------------------


def section_of(view: dict, title: str) -> str:
    """The mrkdwn of the section under `*title*`."""
    for block in view["blocks"]:
        text = (block.get("text") or {}).get("text", "") if block.get("type") == "section" else ""
        if text.startswith(f"*{title}*"):
            return text
    raise AssertionError(f"no section {title!r} in the view")


def test_app_home_shows_a_release_as_one_line_with_its_members_and_live_versions_name_it(server_factory, slack):
    from tests.test_dashboard import RELEASE_LINE, released_twice

    srv = released_twice(server_factory, NO_REFRESH)
    view = open_home(srv, slack, APPROVER_1, "EvR1")
    recent = section_of(view, "Recent deploys")
    assert recent.count(RELEASE_LINE) == 1 and "release k12: core nothing → v1" in recent
    assert recent.count("|#") == 3  # three releases, each one line: their nine member rows are folded in
    assert "(production): succeeded" in recent.split(RELEASE_LINE, 1)[1][:40]
    assert "https://slack.com/archives/" in recent  # each links its thread
    flight = section_of(view, "In flight")
    assert "release k12: core v2 → v3, web v2 → v3, ai-gateway v2 → v3 to production: waiting for approval *waiting on you*" in flight
    live = section_of(view, "Live")
    for service in ("core", "web", "ai-gateway"):
        line = live.split(f"• *{service}* (production): ", 1)[1].split("\n", 1)[0]
        assert line.startswith("*v2* since") and "(release k12 <https://slack.com/archives/" in line and "|#5>)" in line
    assert "*k12*" not in live  # live versions stay per service


def test_app_home_folds_a_running_release_into_one_line_with_how_long_it_has_run(server_factory, slack):
    from tests.test_releases import COMMAND_SERVICES, RELEASE

    srv = server_factory(COMMAND_SERVICES + RELEASE + NO_REFRESH, clock=FakeClock(AFTER_SCHOOL))
    plan = [{"service": s, "version": v, "previous_version": p}
            for s, p, v in (("core", "v1", "v2"), ("web", "v1", "v2"), ("ai-gateway", "v3", "v4"))]
    running = seed_release(srv.rt.store, "k12", plan, status="running", started_at=AFTER_SCHOOL - dt.timedelta(minutes=3))
    later = [{**m, "previous_version": m["version"], "version": "v9"} for m in plan]
    queued = seed_release(srv.rt.store, "k12", later, status="queued", queued_until=AFTER_SCHOOL + dt.timedelta(hours=1))
    flight = section_of(open_home(srv, slack, APPROVER_1, "EvR2"), "In flight")
    assert f"#{running} release k12: core v1 → v2, web v1 → v2, ai-gateway v3 → v4 to production: running for 3 min" in flight
    assert f"#{queued} release k12: core v2 → v9, web v2 → v9, ai-gateway v4 → v9 to production: queued until" in flight
    assert flight.count("\n") == 2  # two lines under the title: the three running member rows are not lines of their own
    page = srv.dashboard_client(APPROVER_1).get("/dashboard").text
    progress = page.split('id="in-progress"')[1].split("<h2>Queued")[0]
    assert progress.count('class="card"') == 1 and "release k12: core v1 → v2, web v1 → v2, ai-gateway v3 → v4" in progress
    assert "for 3 min" in progress
    from tests.test_metrics import sample, scrape

    assert sample(scrape(srv), "recess_deploys_in_progress") == 3  # one per member service, not the release's own row
