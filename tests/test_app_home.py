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
    srv = server_factory(many_services(20) + NO_REFRESH, clock=FakeClock(AFTER_SCHOOL), base=base)
    store = srv.rt.store
    for i in range(20):
        for env in ("production", "staging"):
            rows.insert(store, service=f"svc{i:02d}", env=env, version=f"v{i}.0.0-build.{i * 1000}", requester=ENGINEER,
                        status="succeeded", traffic_at=AFTER_SCHOOL - dt.timedelta(hours=i + 1), blue_version=f"v{i}.0.0-prev",
                        blue_retired=0, blue_retire_at=AFTER_SCHOOL + dt.timedelta(minutes=20))
        rows.insert(store, service=f"svc{i:02d}", env="production", version=f"v{i}.1", requester=ENGINEER,
                    status=("pending", "queued", "running")[i % 3], queued_until=AFTER_SCHOOL + dt.timedelta(hours=1))
    for viewer in (APPROVER_1, ENGINEER):
        view = home.home_view(srv.rt, viewer, "America/New_York")
        View(**view).to_dict()  # slack_sdk checks the Home tab's own limits (100 blocks)
        assert len(view["blocks"]) <= 100
        assert len(json.dumps(view).encode()) <= 250_000
        text = text_of(view)
        assert "svc19" in text and "v19.0.0-build.19000" in text and "kept v0.0.0-prev until" in text
        assert "Recent deploys" in text
    admin = text_of(home.home_view(srv.rt, APPROVER_1, "America/New_York"))
    assert "waiting on you" in admin
    shown = admin.count('"radio_buttons"')
    assert shown == 52 or (shown >= 30 and "more flags: the web dashboard" in admin)  # what does not fit says where it is


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
