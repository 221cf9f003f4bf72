"""The web dashboard over HTTP: one-time sign-in, sessions, CSRF, policy, the pages and bad input."""

from __future__ import annotations

import datetime as dt
import re

import httpx
import pytest

from commands import dashboard as dash
from storage import audit
from storage import deploys as rows
from tests.harness import APPROVER_1, APPROVER_2, ENGINEER, FAKE_SERVICE, FakeClock
from tests.test_window_commands import AFTER_SCHOOL

OFREP_KEY = "test-key-for-ofrep-0001"


@pytest.fixture
def srv(server_factory):
    return server_factory(FAKE_SERVICE, clock=FakeClock(AFTER_SCHOOL))


def problem(resp: httpx.Response) -> str:
    found = re.search(r'id="problem">([^<]*)<', resp.text)
    return found.group(1) if found else ""


def ofrep_value(srv, key: str, tenant: str) -> bool:  # noqa: ANN001
    resp = srv.http.post(f"/ofrep/v1/evaluate/flags/{key}", headers={"Authorization": f"Bearer {OFREP_KEY}"},
                         json={"context": {"targetingKey": "student-1", "tenant": tenant}})
    assert resp.status_code == 200, resp.text
    return resp.json()["value"]


def csrf_of(page: httpx.Response) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


# -- sign-in ------------------------------------------------------------------------------------


def test_deploy_dashboard_answers_a_one_time_link_that_sets_a_strict_session_cookie(srv):
    link = srv.dashboard_link(ENGINEER)
    assert link.startswith(f"{srv.url}/dashboard/signin?token=")
    browser = httpx.Client(timeout=10)
    opened = browser.get(link)
    assert opened.status_code == 200 and 'action="/dashboard/signin"' in opened.text
    assert opened.headers["referrer-policy"] == "no-referrer"
    token = link.split("token=", 1)[1]
    signed = browser.post(f"{srv.url}/dashboard/signin", data={"token": token})
    assert signed.status_code == 303 and signed.headers["location"] == "/dashboard"
    cookie = signed.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "max-age=43200" in cookie and "path=/dashboard" in cookie
    assert "secure" not in cookie  # served over plain HTTP here
    page = browser.get(f"{srv.url}/dashboard")
    assert page.status_code == 200 and f'id="signed-in-as" class="small">{ENGINEER}<' in page.text
    assert audit.entries(srv.rt.store, target=f"user:{ENGINEER}")[0]["action"] == "dashboard.signin"


def test_opening_a_link_does_not_spend_it_but_signing_in_does_and_a_reuse_is_refused(srv):
    link = srv.dashboard_link()
    token = link.split("token=", 1)[1]
    assert httpx.get(link).status_code == 200  # a link preview fetching it signs nobody in
    assert httpx.get(link).status_code == 200
    assert httpx.post(f"{srv.url}/dashboard/signin", data={"token": token}).status_code == 303
    again = httpx.post(f"{srv.url}/dashboard/signin", data={"token": token})
    assert again.status_code == 401 and "already used" in problem(again) and "/deploy dashboard" in again.text
    reopened = httpx.get(link)
    assert reopened.status_code == 401 and "already used" in problem(reopened)


def test_an_expired_link_is_refused_with_how_to_get_a_new_one(srv):
    link = srv.dashboard_link()
    srv.clock.advance(minutes=11)
    resp = httpx.post(f"{srv.url}/dashboard/signin", data={"token": link.split("token=", 1)[1]})
    assert resp.status_code == 401 and "expired" in problem(resp) and "/deploy dashboard" in resp.text


def test_a_forged_link_is_refused(srv):
    resp = httpx.get(f"{srv.url}/dashboard/signin?token=not-a-token-recess-gave")
    assert resp.status_code == 401 and "not one recess gave out" in problem(resp)
    assert httpx.post(f"{srv.url}/dashboard/signin", data={}).status_code == 401


def test_sessions_end_after_twelve_hours(srv):
    client = srv.dashboard_client()
    assert client.get("/dashboard").status_code == 200
    srv.clock.advance(hours=12, seconds=1)
    resp = client.get("/dashboard")
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/signin"


def test_without_a_session_the_dashboard_redirects_to_how_to_sign_in(srv):
    for path in ("/dashboard", "/dashboard/deploys", "/dashboard/flags", "/dashboard/metrics", "/dashboard/deploys/1"):
        resp = srv.http.get(path)
        assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/signin", path
    help_page = srv.http.get("/dashboard/signin")
    assert help_page.status_code == 200 and "/deploy dashboard" in help_page.text


def test_a_public_dashboard_opens_read_pages_but_never_toggles(server_factory):
    srv = server_factory(FAKE_SERVICE + "\n[dashboard]\npublic = true\n", clock=FakeClock(AFTER_SCHOOL))
    for path in ("/dashboard", "/dashboard/deploys", "/dashboard/flags", "/dashboard/metrics"):
        assert srv.http.get(path).status_code == 200, path
    resp = srv.http.post("/dashboard/flags", data={"flag": "ai_safety_v2", "tenant": "lincoln-high", "value": "on"})
    assert resp.status_code == 401
    assert ofrep_value(srv, "ai_safety_v2", "lincoln-high") is False


def test_links_are_built_on_public_url_and_cookies_are_secure_on_https(server_factory):
    from tests.harness import BASE_CONFIG

    base = BASE_CONFIG.replace('state_dir = ".recess"', 'state_dir = ".recess"\npublic_url = "https://recess.example.org/"')
    srv = server_factory(FAKE_SERVICE, clock=FakeClock(AFTER_SCHOOL), base=base)
    link = srv.dashboard_link()
    assert link.startswith("https://recess.example.org/dashboard/signin?token=")
    resp = srv.http.post("/dashboard/signin", data={"token": link.split("token=", 1)[1]})
    assert resp.status_code == 303 and "secure" in resp.headers["set-cookie"].lower()


# -- the pages ----------------------------------------------------------------------------------


def seed_live(srv, **values):  # noqa: ANN001, ANN003
    row = {"service": "web", "env": "production", "version": "v1", "requester": ENGINEER, "status": "succeeded",
           "traffic_at": AFTER_SCHOOL - dt.timedelta(hours=3), "started_at": AFTER_SCHOOL - dt.timedelta(hours=3, minutes=2),
           "finished_at": AFTER_SCHOOL - dt.timedelta(hours=3), "blue_retired": 1, **values}
    return rows.insert(srv.rt.store, **row)


def test_overview_shows_what_is_live_the_kept_version_and_what_waits_on_the_viewer_first(srv):
    seed_live(srv, version="v1")
    seed_live(srv, version="v2", previous_version="v1", traffic_at=AFTER_SCHOOL - dt.timedelta(minutes=5),
              blue_version="v1", blue_retired=0, blue_retire_at=AFTER_SCHOOL + dt.timedelta(minutes=25))
    mine = rows.insert(srv.rt.store, service="web", env="staging", version="v3", requester=APPROVER_1, status="pending")
    theirs = rows.insert(srv.rt.store, service="web", env="production", version="v4", requester=ENGINEER, status="pending")
    client = srv.dashboard_client(APPROVER_2)
    page = client.get("/dashboard")
    assert page.status_code == 200
    live = re.search(r'data-service="web" data-env="production">(.*?)</tr>', page.text, re.S).group(1)
    assert "<strong>v2</strong>" in live and "v1 until" in live
    waiting = page.text.split('id="waiting"')[1].split("</div>\n\n")[0]
    assert waiting.index(f"#{mine} ") < waiting.index(f"#{theirs} ") or "waiting on you" in waiting
    assert waiting.count("waiting on you") == 2  # APPROVER_2 may approve both
    engineer_view = srv.dashboard_client(ENGINEER).get("/dashboard").text.split('id="waiting"')[1].split("</div>\n\n")[0]
    assert "waiting on you" not in engineer_view  # an engineer approves nothing
    assert "Safe to deploy now" in page.text and 'id="safe-until"' in page.text
    assert "lincoln-high starts school" in page.text
    assert page.text.count('class="tl-school_hours"') >= 5  # the week ahead, per school


def test_deploys_are_filtered_paged_and_bad_filters_are_named(srv):
    for i in range(60):
        rows.insert(srv.rt.store, service="web", env="staging" if i % 2 else "production", version=f"v{i}",
                    requester=ENGINEER, status="succeeded" if i % 3 else "failed")
    client = srv.dashboard_client()
    first = client.get("/dashboard/deploys")
    assert first.status_code == 200 and first.text.count('href="/dashboard/deploys/') == 50 and 'id="older"' in first.text
    second = client.get("/dashboard/deploys?page=2")
    assert second.text.count('href="/dashboard/deploys/') == 10
    failed = client.get("/dashboard/deploys?status=failed&env=production")
    assert "10 deploys" in failed.text
    for query, named in (("status=burning", "'burning'"), ("service=api", "'api'"), ("env=moon", "'moon'"),
                         ("page=zero", "'zero'"), ("dora=vibes", "'vibes'")):
        resp = client.get(f"/dashboard/deploys?{query}")
        assert resp.status_code == 400 and named in problem(resp).replace("&#39;", "'"), query


def test_unknown_deploy_ids_answer_a_404_page(srv):
    client = srv.dashboard_client()
    for raw in ("999", "abc", "1e9", "-1"):
        resp = client.get(f"/dashboard/deploys/{raw}")
        assert resp.status_code == 404 and "No such deploy" in resp.text, raw


def test_a_deploy_page_shows_its_steps_with_durations_approvals_migration_report_and_thread(srv):
    d = rows.insert(srv.rt.store, service="web", env="production", version="v2", previous_version="v1", requester=ENGINEER,
                    status="succeeded", channel="C0DEPLOYS", card_ts="1800000001.000100", approvals_needed=1,
                    lint={"findings": [{"file": "001.sql", "line": 3, "rule": "require-concurrent-index-creation",
                                        "severity": "block", "message": "CREATE INDEX locks writes"}]})
    rows.add_approval(srv.rt.store, d, APPROVER_1)
    t0 = AFTER_SCHOOL
    for i, name in enumerate(("build", "start_green", "health", "shift")):
        step = rows.start_step(srv.rt.store, d, name, at=t0 + dt.timedelta(seconds=10 * i))
        rows.finish_step(srv.rt.store, step, "ok", "fine", at=t0 + dt.timedelta(seconds=10 * i + 4))
    page = srv.dashboard_client().get(f"/dashboard/deploys/{d}")
    assert page.status_code == 200
    steps = page.text.split('id="steps"')[1]
    for name in ("build", "start_green", "health", "shift"):
        assert f"<td>{name}</td>" in steps
    assert steps.count("4.0 s") == 4
    assert APPROVER_1 in page.text.split('id="approvals"')[1][:200]
    assert "require-concurrent-index-creation" in page.text
    assert 'href="https://slack.com/archives/C0DEPLOYS/p1800000001000100"' in page.text


# -- flag toggles -------------------------------------------------------------------------------


def test_a_flag_admin_toggles_a_flag_for_one_school_and_ofrep_answers_it_audited_and_announced(srv, slack):
    client = srv.dashboard_client(APPROVER_1)
    page = client.get("/dashboard/flags?tenant=la-elementary")
    assert page.status_code == 200 and 'data-toggle="ai_safety_v2:on"' in page.text
    resp = client.post("/dashboard/flags", data={"csrf": csrf_of(page), "flag": "ai_safety_v2", "tenant": "la-elementary",
                                                "value": "on"})
    assert resp.status_code == 303 and "changed=ai_safety_v2" in resp.headers["location"]
    assert ofrep_value(srv, "ai_safety_v2", "la-elementary") is True
    assert ofrep_value(srv, "ai_safety_v2", "lincoln-high") is False
    entry = audit.entries(srv.rt.store, target="flag:ai_safety_v2")[0]
    assert entry["actor"] == APPROVER_1 and entry["action"] == "flag.on" and entry["command"].startswith("dashboard:")
    slack.wait_for(lambda s: any("ai_safety_v2" in t and "la-elementary" in t for t in s.texts()))
    back = client.post("/dashboard/flags", data={"csrf": csrf_of(page), "flag": "ai_safety_v2", "tenant": "la-elementary",
                                                "value": "default"})
    assert back.status_code == 303 and ofrep_value(srv, "ai_safety_v2", "la-elementary") is False


def test_a_toggle_without_its_csrf_token_is_refused_and_changes_nothing(srv):
    client = srv.dashboard_client(APPROVER_1)
    client.get("/dashboard/flags")
    for form in ({}, {"csrf": "forged"}):
        resp = client.post("/dashboard/flags", data={**form, "flag": "ai_safety_v2", "tenant": "lincoln-high", "value": "on"})
        assert resp.status_code == 403 and "CSRF" in problem(resp)
    assert ofrep_value(srv, "ai_safety_v2", "lincoln-high") is False


def test_a_toggle_by_someone_who_is_not_a_flag_admin_is_refused_and_audited(srv):
    client = srv.dashboard_client(ENGINEER)
    page = client.get("/dashboard/flags")
    assert 'id="not-admin"' in page.text and "data-toggle=" not in page.text
    resp = client.post("/dashboard/flags", data={"csrf": csrf_of(page), "flag": "ai_safety_v2", "tenant": "lincoln-high",
                                                "value": "on"})
    assert resp.status_code == 403 and "flag admins" in problem(resp)
    assert ofrep_value(srv, "ai_safety_v2", "lincoln-high") is False
    refused = audit.entries(srv.rt.store, target="flag:ai_safety_v2")[0]
    assert refused["action"] == "flag.refused" and refused["actor"] == ENGINEER


def test_a_toggle_for_an_unknown_flag_tenant_or_value_is_a_400(srv):
    client = srv.dashboard_client(APPROVER_1)
    csrf = csrf_of(client.get("/dashboard/flags"))
    for form, named in (({"flag": "no_such_flag", "tenant": "lincoln-high", "value": "on"}, "no_such_flag"),
                        ({"flag": "ai_safety_v2", "tenant": "hogwarts", "value": "on"}, "hogwarts"),
                        ({"flag": "ai_safety_v2", "tenant": "lincoln-high", "value": "maybe"}, "maybe")):
        resp = client.post("/dashboard/flags", data={"csrf": csrf, **form})
        assert resp.status_code == 400 and named in problem(resp), form
    assert client.get("/dashboard/flags?tenant=hogwarts").status_code == 400
    assert ofrep_value(srv, "ai_safety_v2", "lincoln-high") is False


# -- DORA ----------------------------------------------------------------------------------------


def test_dora_page_shows_the_four_keys_with_links_to_the_deploys_they_count(srv):
    now = AFTER_SCHOOL
    ok = seed_live(srv, version="v1", traffic_at=now - dt.timedelta(days=3), committed_at=now - dt.timedelta(days=3, hours=2))
    bad = seed_live(srv, version="v2", status="rolled_back", traffic_at=now - dt.timedelta(days=2),
                    finished_at=now - dt.timedelta(days=2) + dt.timedelta(minutes=6))
    client = srv.dashboard_client()
    page = client.get("/dashboard/metrics?days=30")
    assert page.status_code == 200 and page.text.count("<rect class=\"bar\"") >= 4 * 4
    assert 'href="/dashboard/deploys?dora=failure_rate&days=30"' in page.text.replace("&amp;", "&")
    assert "50.0 %" in page.text and "2 h" in page.text and "6 min" in page.text
    counted = client.get("/dashboard/deploys?dora=failure_rate&days=30")
    assert counted.status_code == 200 and f'href="/dashboard/deploys/{bad}"' in counted.text
    assert f'href="/dashboard/deploys/{ok}"' not in counted.text
    assert client.get("/dashboard/metrics?days=7").status_code == 400
    assert client.get("/dashboard/metrics?service=api").status_code == 400


def test_unknown_dashboard_pages_are_404_pages(srv):
    resp = srv.dashboard_client().get("/dashboard/nope")
    assert resp.status_code == 404 and "No such page" in resp.text


def test_dashboard_pages_never_answer_500_to_odd_input(srv):
    client = srv.dashboard_client(APPROVER_1)
    for path in ("/dashboard/deploys?page=0", "/dashboard/deploys?page=99999999999", "/dashboard/deploys?page=9",
                 "/dashboard/deploys?dora=restore&days=abc", "/dashboard/flags?tenant=%00", "/dashboard/metrics?days=-1"):
        assert client.get(path).status_code in (200, 400), path
    big = client.post("/dashboard/flags", content=b"x" * 20_000, headers={"content-type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413


def test_sessions_and_unspent_links_survive_a_restart(server_factory):
    first = server_factory(FAKE_SERVICE, clock=FakeClock(AFTER_SCHOOL))
    client = first.dashboard_client(APPROVER_1)
    spare = first.dashboard_link(ENGINEER)
    first.stop()
    second = server_factory(FAKE_SERVICE, clock=FakeClock(AFTER_SCHOOL))  # the same folder, the same store
    client.base_url = second.url
    page = client.get("/dashboard")
    assert page.status_code == 200 and APPROVER_1 in page.text
    token = spare.split("token=", 1)[1]
    assert httpx.post(f"{second.url}/dashboard/signin", data={"token": token}).status_code == 303


# -- releases: one line, one row, its members on its page, counted once -------------------------


def released_twice(server_factory, extra: str = ""):  # noqa: ANN001, ANN201
    """A server with release k12 (core, web, ai-gateway) deployed for real twice, v1 then v2, on
    the fake platform (each a parent row and three member rows), and v3 requested, waiting."""
    from tests.fake_platform import FakePlatform
    from tests.test_e2e_local import approve, wait_status
    from tests.test_releases import COMMAND_SERVICES, MEMBERS, RELEASE

    srv = server_factory(COMMAND_SERVICES + RELEASE + extra, clock=FakeClock(AFTER_SCHOOL))
    fakes = {name: FakePlatform(name) for name in (*MEMBERS, "lunch")}
    srv.rt.extras["platform_factory"] = lambda cfg, service, env: fakes[service]
    for version, parent in (("v1", 1), ("v2", 5)):
        srv.command("/deploy", f"k12 {version}", user=ENGINEER)
        approve(srv, parent)
        done = wait_status(srv, parent, ("succeeded", "failed", "rolled_back"))
        assert done["status"] == "succeeded", done["outcome"]
    srv.command("/deploy", "k12 v3", user=ENGINEER)
    srv.rt.outbox.flush()
    assert rows.is_release(rows.get(srv.rt.store, 9)) and rows.get(srv.rt.store, 9)["status"] == "pending"
    return srv


RELEASE_LINE = "release k12: core v1 → v2, web v1 → v2, ai-gateway v1 → v2"


def test_overview_shows_a_release_as_one_line_with_its_members_and_live_versions_name_it(server_factory):
    srv = released_twice(server_factory)
    page = srv.dashboard_client(APPROVER_1).get("/dashboard")
    assert page.status_code == 200
    recent = page.text.split('id="recent"')[1].split("</table>")[0]
    assert recent.count("<tr") == 1 + 3  # the header and three releases: no member row of its own
    assert RELEASE_LINE.split(": ", 1)[1] in recent and "core nothing → v1, web nothing → v1" in recent
    assert "<td>core</td>" not in recent
    waiting = page.text.split('id="waiting"')[1].split("</div>\n\n")[0]
    assert "#9 release k12: core v2 → v3, web v2 → v3, ai-gateway v2 → v3" in waiting and "waiting on you" in waiting
    for service in ("core", "web", "ai-gateway"):
        live = re.search(rf'data-service="{service}" data-env="production">(.*?)</tr>', page.text, re.S).group(1)
        assert "<strong>v2</strong>" in live and 'href="/dashboard/deploys/5">(release k12 #5)</a>' in live
    assert 'data-service="k12"' not in page.text  # live versions stay per service


def test_deploys_list_a_release_as_one_row_and_a_member_filter_finds_its_member_rows(server_factory):
    srv = released_twice(server_factory)
    client = srv.dashboard_client()
    listed = client.get("/dashboard/deploys")
    assert "3 deploys" in listed.text
    table = listed.text.split('id="deploys"')[1].split("</table>")[0]
    assert table.count('<tr class="release">') == 3 and "core v1 → v2, web v1 → v2, ai-gateway v1 → v2" in table
    core = client.get("/dashboard/deploys?service=core")
    assert "2 deploys" in core.text
    core_rows = core.text.split('id="deploys"')[1].split("</table>")[0]
    assert core_rows.count("<td>core</td>") == 2
    assert 'href="/dashboard/deploys/1">(release k12 #1)</a>' in core_rows
    assert 'href="/dashboard/deploys/5">(release k12 #5)</a>' in core_rows


def test_a_release_page_shows_its_members_with_links_steps_and_approvals_and_a_member_links_its_release(server_factory):
    srv = released_twice(server_factory)
    client = srv.dashboard_client()
    page = client.get("/dashboard/deploys/5")
    assert page.status_code == 200
    assert "Release k12 #5 to production: core v1 → v2, web v1 → v2, ai-gateway v1 → v2" in page.text
    members = page.text.split('id="members"')[1].split("</table>")[0]
    for member_id, service in zip((6, 7, 8), ("core", "web", "ai-gateway"), strict=True):
        assert f'<tr data-service="{service}"><td><a href="/dashboard/deploys/{member_id}">{member_id}</a></td>' in members
    assert members.count("s-succeeded") == 3
    steps = page.text.split('id="steps"')[1].split("</table>")[0]
    assert "<td>shift</td>" in steps  # the release's own switch
    for service in ("core", "web", "ai-gateway"):
        assert f"<td>{service}: " in steps  # and each member's steps, on one timeline
    assert APPROVER_1 in page.text.split('id="approvals"')[1][:200]
    member = client.get("/dashboard/deploys/6")
    assert member.status_code == 200
    assert 'id="release-of">A member of <a href="/dashboard/deploys/5">release k12 #5</a>' in member.text


def test_a_release_counts_once_per_member_service_in_dora_and_metrics_and_never_as_a_service(server_factory):
    from tests.test_metrics import sample, scrape

    srv = released_twice(server_factory)
    members = [r["id"] for r in srv.rt.store.rows("SELECT id FROM deploys WHERE kind = 'deploy' ORDER BY id")]
    assert members == [2, 3, 4, 6, 7, 8]
    everyone, *per_service = dash.dora_all(srv.cfg, srv.rt.store, now=AFTER_SCHOOL, days=30)
    assert sorted(everyone.frequency.ids) == members  # the parents (1, 5) are not deployments of a service
    assert everyone.changes == 6
    by_service = {d.service: d for d in per_service}
    assert "k12" not in by_service
    for service, ids in (("core", [2, 6]), ("web", [3, 7]), ("ai-gateway", [4, 8]), ("lunch", [])):
        assert sorted(by_service[service].frequency.ids) == ids and by_service[service].changes == len(ids)
    families = scrape(srv)
    for name, samples in families.items():
        assert all(s.labels.get("service") != "k12" for s in samples), name
    for service in ("core", "web", "ai-gateway"):
        assert sample(families, "recess_deploys", "_total", service=service, env="production", outcome="succeeded") == 2
        assert sample(families, "recess_live_info", service=service, env="production", version="v2") == 1
        assert sample(families, "recess_deploy_duration_seconds", "_count", service=service, env="production") == 2
        assert sample(families, "recess_dora_deployment_frequency", service=service, env="production", days="30") == \
            pytest.approx(2 / (30 / 7))
    assert sample(families, "recess_dora_deployment_frequency", service="all", env="production", days="30") == \
        pytest.approx(6 / (30 / 7))
    assert sample(families, "recess_deploys_in_progress") == 0


def test_a_release_rollback_is_one_line_and_a_member_rolled_back_on_its_own_stays_its_own_line(server_factory):
    from tests.test_e2e_local import wait_status
    from tests.test_metrics import sample, scrape

    srv = released_twice(server_factory)
    srv.rt.outbox.flush()
    srv.command("/rollback", "core")
    srv.click("rollback_start", 6, user=ENGINEER)  # core alone, the old way: deploy #10
    assert wait_status(srv, 10, ("succeeded", "failed"))["status"] == "succeeded"
    srv.command("/rollback", "k12")
    srv.click("rollback_start", 5, user=ENGINEER)  # the rest of the release: #11, members #12 and #13
    rollback = wait_status(srv, 11, ("succeeded", "failed"))
    assert rows.is_release(rollback) and rollback["status"] == "succeeded", rollback["outcome"]
    assert [m["id"] for m in rows.members(srv.rt.store, rollback)] == [12, 13]
    client = srv.dashboard_client()
    recent = client.get("/dashboard").text.split('id="recent"')[1].split("</table>")[0]
    assert "rollback of release k12</td><td>ai-gateway v2 → v1, web v2 → v1</td>" in recent
    assert 'href="/dashboard/deploys/10">10</a></td><td>core</td><td>v1</td>' in recent  # a deploy of its own
    for folded in (12, 13):
        assert f'href="/dashboard/deploys/{folded}"' not in recent
    release = client.get("/dashboard/deploys/5").text
    assert 'core was rolled back on its own by <a href="/dashboard/deploys/10">#10</a>' in release
    assert "Rolled back by <a href=\"/dashboard/deploys/11\">#11</a>" in release
    solo = client.get("/dashboard/deploys/10").text
    assert 'A rollback of one member of <a href="/dashboard/deploys/5">release k12 #5</a>' in solo
    everyone = dash.dora(srv.cfg, srv.rt.store, now=AFTER_SCHOOL, days=30)
    assert sorted(everyone.failure_rate.ids) == [6, 7, 8] and everyone.changes == 6  # one failed change per member service
    families = scrape(srv)
    assert sample(families, "recess_rollback_seconds", "_count") == 3  # #10, #12, #13: not the release's own row
    for name, samples in families.items():
        assert all(s.labels.get("service") != "k12" for s in samples), name
    assert sample(families, "recess_deploys", "_total", service="core", env="production", outcome="rolled_back") == 1
    assert sample(families, "recess_live_info", service="web", env="production", version="v1") == 1
