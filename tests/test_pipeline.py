"""The deploy state machine against a fake platform: every step, every failure, rollback, recovery."""

from __future__ import annotations

import datetime as dt

import pytest

from commands.config import load_config
from commands.deploys import Deployer, DeployError
from commands.policy import Policy
from commands.recovery import recover_all
from commands.rollback import plan, rollback
from storage import deploys as rows
from storage.db import Store
from tests.fake_platform import FakePlatform, Ticker
from tests.harness import (
    APPROVER_1,
    APPROVER_2,
    BASE_CONFIG,
    ENGINEER,
    FAKE_SERVICE,
    FakeClock,
    write_config,
)

AFTER_SCHOOL = dt.datetime(2027, 3, 17, 2, 0, tzinfo=dt.UTC)
IN_SCHOOL = dt.datetime(2027, 3, 16, 13, 30, tzinfo=dt.UTC)


class Notes:
    def __init__(self) -> None:
        self.cards: list[tuple[str, int]] = []
        self.thread_lines: list[tuple[int, str, bool]] = []

    def post_card(self, deploy_id: int) -> None:
        self.cards.append(("post", deploy_id))

    def update_card(self, deploy_id: int) -> None:
        self.cards.append(("update", deploy_id))

    def thread(self, deploy_id: int, text: str, *, broadcast: bool = False, offer_rollback: bool = False) -> None:
        self.thread_lines.append((deploy_id, text, broadcast))

    def thread_line(self, deploy_id: int, key: str, text: str) -> None:
        """A line edited in place: only its latest text is kept, at the place it was first posted."""
        if not hasattr(self, "lines"):
            self.lines: dict[tuple[int, str], int] = {}
        at = self.lines.setdefault((deploy_id, key), len(self.thread_lines))
        if at == len(self.thread_lines):
            self.thread_lines.append((deploy_id, text, False))
        else:
            self.thread_lines[at] = (deploy_id, text, False)

    def channel(self, text: str) -> None:
        self.thread_lines.append((0, text, True))

    def text(self) -> str:
        return "\n".join(t for _, t, _ in self.thread_lines)


@pytest.fixture
def make(tmp_path):
    def build(*, live: str | None = "v1", clock=None, extra: str = FAKE_SERVICE, base: str = BASE_CONFIG):  # noqa: ANN001
        cfg = load_config(write_config(tmp_path, extra, base))
        fake = FakePlatform(live=live)
        armed: list = []
        ticker = Ticker()
        d = Deployer(
            cfg=cfg, store=Store(cfg.database_path), policy=Policy(cfg), notify=Notes(),
            platform_for=lambda s, e: fake, clock=clock or FakeClock(AFTER_SCHOOL),
            run_async=lambda fn: fn(), arm=lambda job, at, fn: armed.append((job, at)), sleep=ticker.sleep,
            monotonic=ticker,
        )
        if live:  # a first successful deploy of `live`, as history
            rows.insert(d.store, service="web", env="production", version=live, requester=ENGINEER, status="succeeded",
                        traffic_at=dt.datetime(2027, 1, 1, tzinfo=dt.UTC), blue_retired=1)
            rows.insert(d.store, service="web", env="staging", version=live, requester=ENGINEER, status="succeeded",
                        traffic_at=dt.datetime(2027, 1, 1, tzinfo=dt.UTC), blue_retired=1)
        return d, fake, armed

    return build


def deploy_and_approve(d: Deployer, version: str = "v2", **kw) -> dict:  # noqa: ANN003
    req = d.request(actor=ENGINEER, service="web", version=version, **kw)
    if req["status"] == "pending":
        d.approve(req["id"], APPROVER_1)
    return rows.get(d.store, req["id"])


def test_approved_deploy_moves_all_traffic_to_green_and_keeps_blue(make):
    d, fake, armed = make()
    result = deploy_and_approve(d)
    assert result["status"] == "succeeded"
    assert fake.weights == {"blue": 0, "green": 100}
    assert fake.versions == {"blue": "v1", "green": "v2"} and fake.running["blue"]
    assert [s["name"] for s in rows.steps(d.store, result["id"])] == ["build", "start_green", "migrate", "health", "smoke", "shift", "bake"]
    assert result["blue_version"] == "v1" and result["blue_retire_at"] == AFTER_SCHOOL + dt.timedelta(minutes=30)
    assert (f"retire-{result['id']}", result["blue_retire_at"]) in armed
    assert "PGOPTIONS" in [c for c in fake.calls if c[0] == "migrate"][0][3]


@pytest.mark.parametrize("step", ["start", "migrate", "health", "shift"])
def test_a_failing_step_leaves_traffic_on_blue_and_green_stopped(make, step):
    d, fake, _ = make()
    fake.fail[step] = f"{step} exploded"
    if step == "shift":
        # The router refuses the switch to green, but accepts the way back.
        original = fake.shift

        def shift(weights):  # noqa: ANN001
            if weights.get("green") == 100:
                raise __import__("platforms.base").base.PlatformError("router refused")
            fake.fail.pop("shift", None)
            return original(weights)

        fake.shift = shift
    result = deploy_and_approve(d)
    assert result["status"] == "failed"
    assert fake.weights["blue"] == 100 and fake.weights["green"] == 0
    assert fake.running["green"] is False
    assert fake.running["blue"] and fake.versions["blue"] == "v1"
    failed = [s for s in rows.steps(d.store, result["id"]) if s["status"] == "failed"]
    assert len(failed) == 1
    assert f"<@{ENGINEER}>" in d.notify.text()  # the requester is mentioned


def test_a_failing_smoke_test_aborts_with_its_output(make):
    d, fake, _ = make(extra=FAKE_SERVICE.replace('health_timeout = "1s"', 'health_timeout = "1s"\nsmoke = "echo grades page 500 >&2; exit 3"'))
    result = deploy_and_approve(d)
    assert result["status"] == "failed" and "smoke test exited 3" in result["outcome"]
    assert "grades page 500" in d.notify.text()
    assert fake.weights == {"blue": 100, "green": 0}


def test_a_failed_first_deploy_leaves_nothing_serving(make):
    d, fake, _ = make(live=None)
    fake.fail["health"] = "down"
    result = deploy_and_approve(d)
    assert result["status"] == "failed"
    assert fake.weights == {"blue": 0, "green": 0}
    assert not any(fake.running.values())


def test_canary_steps_shift_traffic_gradually_then_fully(make):
    d, fake, _ = make()
    deploy_and_approve(d, canary=[10, 50])
    shifts = [c[1] for c in fake.calls if c[0] == "shift"]
    assert shifts == [{"blue": 90, "green": 10}, {"blue": 50, "green": 50}, {"green": 100, "blue": 0}]


def test_deploy_waits_for_last_school_to_end_its_day(make):
    clock = FakeClock(IN_SCHOOL)
    d, fake, armed = make(clock=clock)
    result = deploy_and_approve(d)
    assert result["status"] == "queued"
    assert result["queued_until"] == dt.datetime(2027, 3, 16, 22, 0, tzinfo=dt.UTC)  # 15:00 in Los Angeles
    assert armed[-1] == (f"deploy-{result['id']}", result["queued_until"])
    d.run_due()
    assert rows.get(d.store, result["id"])["status"] == "queued"  # not yet
    clock.set(result["queued_until"])
    d.run_due()
    assert rows.get(d.store, result["id"])["status"] == "succeeded"


def test_a_queued_deploy_requeues_when_a_freeze_closes_the_window(make):
    from storage import freezes

    clock = FakeClock(IN_SCHOOL)
    d, fake, _ = make(clock=clock)
    result = deploy_and_approve(d)
    freezes.add(d.store, start=result["queued_until"] - dt.timedelta(hours=1), end=result["queued_until"] + dt.timedelta(days=1),
                reason="Report cards", created_by=APPROVER_1)
    clock.set(result["queued_until"])
    d.run_due()
    again = rows.get(d.store, result["id"])
    assert again["status"] == "queued" and again["queued_until"] > result["queued_until"]
    assert "queued for the next safe window" in d.notify.text()


def test_now_override_during_school_needs_one_more_approval_and_never_the_requester(make):
    d, fake, _ = make(clock=FakeClock(IN_SCHOOL))
    req = d.request(actor=ENGINEER, service="web", version="v2", now_reason="gradebook outage")
    assert req["approvals_needed"] == 2
    with pytest.raises(DeployError, match="ask one of them"):
        d.approve(req["id"], ENGINEER)
    assert d.approve(req["id"], APPROVER_1) == "approval 1 of 2 recorded"
    with pytest.raises(DeployError, match="already approved"):
        d.approve(req["id"], APPROVER_1)
    assert d.approve(req["id"], APPROVER_2) == "approved"
    assert rows.get(d.store, req["id"])["status"] == "succeeded"  # ran during school hours, by override


def test_approver_cannot_approve_own_deploy(make):
    d, _, _ = make()
    req = d.request(actor=APPROVER_1, service="web", version="v2")
    with pytest.raises(DeployError, match="another approver"):
        d.approve(req["id"], APPROVER_1)
    assert rows.get(d.store, req["id"])["status"] == "pending"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"service": "gradebook", "version": "v2"}, "unknown service"),
        ({"service": "web", "version": "v2", "env": "qa"}, "unknown environment"),
        ({"service": "web", "version": "v 2!"}, "is not a version"),
        ({"service": "web", "version": "v1"}, "already live"),
        ({"service": "web", "version": "v2", "canary": [50, 10]}, "rising percentages"),
        ({"service": "web", "version": "v2", "canary": [100]}, "rising percentages"),
    ],
)
def test_bad_deploy_requests_are_refused_and_store_nothing(make, kw, message):
    d, _, _ = make()
    before = d.store.execute("SELECT count(*) FROM deploys").fetchone()[0]
    with pytest.raises(DeployError, match=message):
        d.request(actor=ENGINEER, **kw)
    assert d.store.execute("SELECT count(*) FROM deploys").fetchone()[0] == before


def test_a_deploy_requested_while_another_runs_waits_and_starts_after_it_in_approval_order(make):
    d, fake, _ = make()
    runs: list[int] = []
    first = d.request(actor=ENGINEER, service="web", version="v2")
    third_id: list[int] = []
    original_start = fake.start

    def start(slot, version):  # noqa: ANN001 (while v2 runs, two more deploys are requested and approved)
        original_start(slot, version)
        runs.append(version)
        d.clock.advance(minutes=1)  # each deploy takes its time
        if version == "v2":
            second = d.request(actor=APPROVER_2, service="web", version="v3")
            third = d.request(actor=ENGINEER, service="web", version="v4")
            third_id.append(third["id"])
            d.approve(third["id"], APPROVER_2)  # v4's approvals complete first...
            d.clock.advance(seconds=1)
            d.approve(second["id"], APPROVER_1)  # ...then v3's
            assert rows.get(d.store, second["id"])["status"] == "approved"  # waits: v2 holds the slots
            assert "Waits for deploy #" in d.notify.text()

    fake.start = start
    d.approve(first["id"], APPROVER_1)
    assert runs == ["v2", "v4", "v3"]  # one at a time, in the order approvals completed
    assert rows.live(d.store, "web", "production")["version"] == "v3"
    assert rows.get(d.store, third_id[0])["previous_version"] == "v2"  # read when it started, not requested
    # The same version twice is refused; another environment is another queue.
    with pytest.raises(DeployError, match="already live"):
        d.request(actor=ENGINEER, service="web", version="v3")
    assert d.request(actor=ENGINEER, service="web", version="v3", env="staging")["status"] == "succeeded"


def test_the_same_version_requested_twice_is_refused_naming_the_first_request(make):
    d, _, _ = make()
    first = d.request(actor=ENGINEER, service="web", version="v2")
    with pytest.raises(DeployError, match=f"already requested as deploy #{first['id']}"):
        d.request(actor=APPROVER_2, service="web", version="v2")


def test_an_approver_can_stop_a_running_deploy_and_traffic_returns_to_blue(make):
    base = BASE_CONFIG.replace('bake_time = "0s"', 'bake_time = "30s"', 1)
    d, fake, _ = make(base=base)
    ticker = d.sleep
    refused = []

    def sleep(seconds):  # noqa: ANN001 (during the bake an approver presses Stop)
        ticker(seconds)
        row = rows.holder(d.store, "web", "production")
        if row and row["traffic_at"] and row["id"] not in d.stop_requests:
            with pytest.raises(DeployError, match="only approvers"):
                d.stop(row["id"], ENGINEER)
            refused.append(row["id"])
            d.stop(row["id"], APPROVER_2)

    d.sleep = sleep
    result = deploy_and_approve(d)
    assert refused
    assert result["status"] == "failed" and "stopped by <@U0APPROVER2>" in result["outcome"]
    assert fake.weights == {"blue": 100, "green": 0} and not fake.running["green"]


def test_decided_and_cancelled_requests_refuse_clicks(make):
    d, _, _ = make()
    req = d.request(actor=ENGINEER, service="web", version="v2")
    d.cancel(req["id"], ENGINEER)
    with pytest.raises(DeployError, match="already cancelled"):
        d.approve(req["id"], APPROVER_1)
    with pytest.raises(DeployError, match="cancelled"):
        d.cancel(req["id"], ENGINEER)


def test_bake_watch_rolls_back_when_green_turns_unhealthy_after_the_switch(make):
    base = BASE_CONFIG.replace('bake_time = "0s"', 'bake_time = "5s"', 1)
    d, fake, _ = make(base=base)
    fake.health_after_shift_fails = True
    result = deploy_and_approve(d)
    assert result["status"] == "rolled_back"
    assert "automatic" in result["outcome"]
    assert fake.weights == {"blue": 100, "green": 0}
    assert "*automatic rollback*" in d.notify.text()
    assert rows.live(d.store, "web", "production")["version"] == "v1"


def test_bake_watch_rolls_back_on_a_5xx_ratio_above_the_threshold(make):
    from platforms.base import RouterStats

    base = BASE_CONFIG.replace('bake_time = "0s"', 'bake_time = "5s"', 1)
    d, fake, _ = make(base=base)
    original = fake.health

    def health(slot):  # noqa: ANN001
        if fake.weights.get(slot) == 100 and slot == "green":
            fake.stats["green"] = RouterStats(requests=100, responses_5xx=30)
        return original(slot)

    fake.health = health
    result = deploy_and_approve(d)
    assert result["status"] == "rolled_back" and "30 of 100" in result["outcome"]


def test_rollback_flips_back_to_blue_in_one_call_and_can_be_undone(make):
    d, fake, _ = make()
    deployed = deploy_and_approve(d)
    p = plan(d, "web", None, ENGINEER)
    assert (p.current, p.target, p.blue_alive) == ("v2", "v1", True)
    calls_before = len([c for c in fake.calls if c[0] == "shift"])
    rb = rollback(d, deployed["id"], ENGINEER)
    assert rb["status"] == "succeeded" and rb["kind"] == "rollback"
    assert [c for c in fake.calls if c[0] == "shift"][calls_before:] == [("shift", {"blue": 100, "green": 0})]
    assert fake.running["green"]  # the undone version stays up until keep_blue
    assert rows.get(d.store, deployed["id"])["status"] == "rolled_back"
    assert "traffic back on v1 in" in rb["outcome"] and "after the click" in rb["outcome"]
    # Undo: the rollback itself rolls back the same way.
    undo = rollback(d, rb["id"], APPROVER_1)
    assert undo["version"] == "v2" and fake.weights == {"blue": 0, "green": 100}


def test_rollback_from_a_stale_card_is_refused(make):
    d, fake, _ = make()
    first = deploy_and_approve(d)
    second = deploy_and_approve(d, "v3")
    with pytest.raises(DeployError, match="stale"):
        rollback(d, first["id"], ENGINEER)
    assert rows.get(d.store, second["id"])["status"] == "succeeded"


def test_rollback_without_a_previous_version_is_refused(make):
    d, _, _ = make(live=None)
    with pytest.raises(DeployError, match="no previous good version"):
        plan(d, "web", None, ENGINEER)
    deploy_and_approve(d, "v1")  # the first deploy: still nothing to return to
    with pytest.raises(DeployError, match="no previous good version"):
        plan(d, "web", None, ENGINEER)


def test_after_blue_is_retired_rollback_redeploys_the_previous_version(make):
    clock = FakeClock(AFTER_SCHOOL)
    d, fake, _ = make(clock=clock)
    deployed = deploy_and_approve(d)
    clock.advance(minutes=31)
    d.retire_due()
    assert fake.running["blue"] is False
    assert "retired" in d.notify.text()
    p = plan(d, "web", None, ENGINEER)
    assert p.blue_alive is False
    rb = rollback(d, deployed["id"], ENGINEER)
    assert rows.get(d.store, rb["id"])["status"] == "succeeded"
    assert fake.weights == {"blue": 100, "green": 0} and fake.versions["blue"] == "v1"
    assert rows.get(d.store, deployed["id"])["status"] == "rolled_back"


def killed_at(d: Deployer, fake: FakePlatform, step: str | None, weights: dict | None = None, **values) -> int:  # noqa: ANN003
    """A v2 deploy left `running` as a SIGKILL during `step` leaves it: slots chosen, green up."""
    deploy_id = d.request(actor=ENGINEER, service="web", version="v2")["id"]
    rows.transition(d.store, deploy_id, "pending", "running", started_at=AFTER_SCHOOL)
    rows.update(d.store, deploy_id, blue_slot="blue", green_slot="green", blue_version="v1", **values)
    fake.start("green", "v2")
    if weights:
        fake.shift(weights)
    if step:
        rows.start_step(d.store, deploy_id, step)
    return deploy_id


@pytest.mark.parametrize("killed_in", ["start_green", "migrate", "health", "smoke"])
def test_recovery_before_the_switch_returns_traffic_to_blue(make, killed_in):
    d, fake, _ = make()
    req = {"id": killed_at(d, fake, killed_in)}
    done = recover_all(d)
    assert done == [(req["id"], "rolled back to blue")]
    assert fake.weights == {"blue": 100, "green": 0} and not fake.running["green"]
    assert rows.get(d.store, req["id"])["status"] == "failed"
    assert "Recovery" in d.notify.text()


def test_recovery_half_routed_canary_ends_on_blue(make):
    d, fake, _ = make()
    killed_at(d, fake, "shift", {"blue": 50, "green": 50})
    recover_all(d)
    assert fake.weights == {"blue": 100, "green": 0}


def test_recovery_after_the_switch_lets_the_deploy_stand(make):
    d, fake, _ = make()
    req = {"id": killed_at(d, fake, "bake", {"blue": 0, "green": 100})}
    recover_all(d)
    assert rows.get(d.store, req["id"])["status"] == "succeeded"
    assert fake.weights == {"blue": 0, "green": 100} and fake.running["blue"]
    assert rows.live(d.store, "web", "production")["version"] == "v2"


def test_recovery_never_runs_a_deploy_twice(make):
    d, fake, _ = make()
    deploy_and_approve(d)
    starts = len([c for c in fake.calls if c[0] == "start"])
    assert recover_all(d) == []
    d.rearm()
    assert len([c for c in fake.calls if c[0] == "start"]) == starts


def _killed_during_bake(make, **kw):  # noqa: ANN001, ANN003
    base = BASE_CONFIG.replace('bake_time = "0s"', 'bake_time = "5s"', 1)
    d, fake, _ = make(base=base, **kw)
    return d, fake, killed_at(d, fake, "bake", {"blue": 0, "green": 100}, traffic_at=AFTER_SCHOOL)


def test_recovery_during_bake_watches_green_again_before_calling_it_done(make):
    d, fake, deploy_id = _killed_during_bake(make)
    assert recover_all(d) == [(deploy_id, "bake resumed")]
    assert rows.get(d.store, deploy_id)["status"] == "succeeded"
    assert [(s["name"], s["status"]) for s in rows.steps(d.store, deploy_id)] == [("bake", "failed"), ("bake", "succeeded")]


def test_recovery_during_bake_still_rolls_back_a_version_that_turns_bad(make):
    d, fake, deploy_id = _killed_during_bake(make)
    original = fake.health
    calls = []

    def health(slot):  # noqa: ANN001
        calls.append(slot)
        if slot == "green" and len(calls) > 2:  # healthy when recovery looks, bad once the watch runs
            return __import__("platforms.base").base.Health(False, 500, "errors")
        return original(slot)

    fake.health = health
    recover_all(d)
    assert rows.get(d.store, deploy_id)["status"] == "rolled_back"
    assert fake.weights == {"blue": 100, "green": 0}


def test_a_person_can_roll_back_during_the_bake_without_waiting_for_it(make):
    base = BASE_CONFIG.replace('bake_time = "0s"', 'bake_time = "2s"', 1)
    d, fake, _ = make(base=base)
    clicks = []

    ticker = d.sleep

    def sleep(seconds):  # noqa: ANN001
        ticker(seconds)
        # The first pause of the bake watch: an engineer clicks Roll back (twice).
        if not clicks:
            row = rows.holder(d.store, "web", "production")
            p = plan(d, "web", None, ENGINEER)
            assert (p.current, p.target, p.blue_alive) == ("v2", "v1", True)
            clicks.append(rollback(d, row["id"], ENGINEER))
            with pytest.raises(DeployError):
                rollback(d, row["id"], APPROVER_1)

    d.sleep = sleep
    result = deploy_and_approve(d)
    assert clicks and clicks[0]["status"] == "succeeded"
    assert result["status"] == "rolled_back" and "by <@" in result["outcome"]
    assert fake.weights == {"blue": 100, "green": 0}
    assert rows.live(d.store, "web", "production")["version"] == "v1"
    bake = [s for s in rows.steps(d.store, result["id"]) if s["name"] == "bake"][0]
    assert bake["status"] == "failed" and "by hand" in bake["detail"]


def test_a_request_not_approved_in_time_expires_and_refuses_the_click(make):
    clock = FakeClock(AFTER_SCHOOL)
    d, fake, _ = make(clock=clock)
    req = d.request(actor=ENGINEER, service="web", version="v2")
    clock.advance(hours=25)
    with pytest.raises(DeployError, match="expired"):
        d.approve(req["id"], APPROVER_1)
    assert rows.get(d.store, req["id"])["status"] == "cancelled"
    assert not [c for c in fake.calls if c[0] == "start"]
    assert d.request(actor=ENGINEER, service="web", version="v2")["status"] == "pending"  # the lock is free again


def test_an_expired_request_does_not_hold_the_service(make):
    clock = FakeClock(AFTER_SCHOOL)
    d, _, _ = make(clock=clock)
    stale = d.request(actor=ENGINEER, service="web", version="v2")
    clock.advance(hours=25)
    fresh = d.request(actor=APPROVER_2, service="web", version="v3")
    assert fresh["status"] == "pending"
    assert rows.get(d.store, stale["id"])["status"] == "cancelled"


def test_retiring_an_old_kept_version_never_touches_a_newer_deploys_green(make):
    clock = FakeClock(AFTER_SCHOOL)
    d, fake, _ = make(clock=clock)
    first = deploy_and_approve(d)  # v2 live in green, v1 kept in blue
    clock.advance(minutes=31)
    original_start = fake.start

    def start(slot, version):  # noqa: ANN001
        original_start(slot, version)
        d.retire_due()  # the retire sweep fires while the next deploy is in its early steps

    fake.start = start
    second = deploy_and_approve(d, "v3")
    assert second["status"] == "succeeded"
    assert fake.running["blue"] and fake.versions["blue"] == "v3" and fake.weights["blue"] == 100
    assert rows.get(d.store, first["id"])["blue_retired"] == 1


def test_a_slot_that_serves_again_is_never_retired(make):
    clock = FakeClock(AFTER_SCHOOL)
    d, fake, _ = make(clock=clock)
    deployed = deploy_and_approve(d)
    fake.shift({"blue": 100, "green": 0})  # someone moved traffic back by hand
    clock.advance(minutes=31)
    d.retire_due()
    assert fake.running["blue"]
    assert rows.get(d.store, deployed["id"])["blue_retired"] == 0  # tried again by the next sweep


def test_a_recovery_that_cannot_read_the_platform_leaves_traffic_alone_and_asks_for_a_person(make):
    d, fake, _ = make()
    req = {"id": killed_at(d, fake, "health")}
    fake.fail["status"] = "status command exploded"
    recover_all(d)
    assert rows.get(d.store, req["id"])["status"] == "needs_attention"
    assert not [c for c in fake.calls if c[0] in ("shift", "stop")]
    assert "needs attention" in d.notify.text() and "A person needs to look now" in d.notify.text()
    waiting = d.request(actor=ENGINEER, service="web", version="v3")  # accepted, but it waits
    d.approve(waiting["id"], APPROVER_1)
    assert rows.get(d.store, waiting["id"])["status"] == "approved"  # held until the traffic is known good
    fake.fail.clear()  # the platform answers again: blue (v1) serves 100% and is healthy
    d.watch_deploys()
    assert rows.get(d.store, req["id"])["status"] == "failed"
    assert "Resolved" in d.notify.text()
    assert rows.get(d.store, waiting["id"])["status"] == "succeeded"  # the queue moved on


def test_a_platform_error_during_a_rollback_frees_the_service_and_says_so(make):
    d, fake, _ = make()
    deployed = deploy_and_approve(d)
    fake.fail["shift"] = "router away"
    rollback(d, deployed["id"], ENGINEER)
    assert d.store.execute("SELECT status FROM deploys WHERE kind = 'rollback'").fetchone()[0] == "failed"
    assert "Rollback failed" in d.notify.text()
    fake.fail.clear()
    assert rollback(d, deployed["id"], ENGINEER)["status"] == "succeeded"


def test_a_second_rollback_click_after_the_first_finished_is_refused(make):
    d, fake, _ = make()
    deployed = deploy_and_approve(d)
    rollback(d, deployed["id"], ENGINEER)
    with pytest.raises(DeployError):
        rollback(d, deployed["id"], APPROVER_1)
    assert d.store.execute("SELECT count(*) FROM deploys WHERE kind = 'rollback'").fetchone()[0] == 1


def test_a_rollback_between_the_switch_and_the_bake_keeps_the_undone_version_up(make):
    base = BASE_CONFIG.replace('bake_time = "0s"', 'bake_time = "2s"', 1)
    d, fake, _ = make(base=base)
    original_thread = d.notify.thread

    def thread(deploy_id, text, **kw):  # noqa: ANN001, ANN003
        original_thread(deploy_id, text, **kw)
        if "*shift*" in text:  # the switch is recorded; the bake step has not started yet
            rollback(d, deploy_id, ENGINEER)

    d.notify.thread = thread
    result = deploy_and_approve(d)
    assert result["status"] == "rolled_back"
    assert fake.weights == {"blue": 100, "green": 0}
    assert fake.running["green"] and fake.versions["green"] == "v2"  # kept, as the rollback promised
    assert ":red_circle:" not in d.notify.text()


def test_the_state_machine_refuses_a_move_that_is_not_in_its_table(make):
    from commands.deploys import TRANSITIONS, move

    d, _, _ = make()
    req = d.request(actor=ENGINEER, service="web", version="v2")
    assert "succeeded" not in TRANSITIONS["pending"]
    with pytest.raises(ValueError, match="pending -> succeeded"):
        move(d.store, req["id"], "pending", "succeeded")
    assert rows.get(d.store, req["id"])["status"] == "pending"
    assert move(d.store, req["id"], "pending", "cancelled") is True
    assert move(d.store, req["id"], "pending", "cancelled") is False  # a second click changes nothing


def test_a_now_deploy_requested_after_school_and_approved_during_class_needs_its_extra_approval(make):
    clock = FakeClock(AFTER_SCHOOL)
    d, fake, _ = make(clock=clock)
    req = d.request(actor=ENGINEER, service="web", version="v2", now_reason="fixes the gradebook")
    assert req["approvals_needed"] == 1  # after school: no override needed yet
    clock.set(IN_SCHOOL)  # approved the next morning, during class
    assert d.approve(req["id"], APPROVER_1) == "approval 1 of 2 recorded"
    assert rows.get(d.store, req["id"])["status"] == "pending"
    assert not [c for c in fake.calls if c[0] == "start"]
    assert d.approve(req["id"], APPROVER_2) == "approved"
    assert rows.get(d.store, req["id"])["status"] == "succeeded"


def test_a_now_deploy_approved_after_school_that_starts_during_class_goes_back_for_its_extra_approval(make):
    clock = FakeClock(AFTER_SCHOOL)
    d, fake, _ = make(clock=clock)
    blocker = d.request(actor=ENGINEER, service="web", version="v2")
    rows.transition(d.store, blocker["id"], "pending", "running", started_at=AFTER_SCHOOL)  # holds the slots
    req = d.request(actor=ENGINEER, service="web", version="v3", now_reason="fixes the gradebook")
    d.approve(req["id"], APPROVER_1)
    assert rows.get(d.store, req["id"])["status"] == "approved"  # waits behind the running deploy
    clock.set(IN_SCHOOL)
    rows.transition(d.store, blocker["id"], "running", "failed")
    d.start_waiting()  # the service is free during class: the override now costs one more approval
    row = rows.get(d.store, req["id"])
    assert row["status"] == "pending" and row["approvals_needed"] == 2
    assert "would run during school hours" in d.notify.text()


def test_each_deploy_event_is_one_structured_log_line_with_id_service_version_and_actor(make, caplog):
    d, _, _ = make()
    with caplog.at_level("INFO", logger="recess.events"):
        deploy_and_approve(d)
    lines = [r.getMessage() for r in caplog.records if r.name == "recess.events"]
    assert any(line.startswith("deploy=3 event=requested") and f"actor={ENGINEER}" in line for line in lines)
    assert any("event=approved" in line and f"actor={APPROVER_1}" in line and "version=v2" in line for line in lines)
    assert any("event=step" in line and "step=shift" in line and "service=web" in line for line in lines)
    assert any("event=succeeded" in line and "env=production" in line for line in lines)


# -- the build step ------------------------------------------------------------------------------

BUILT_SERVICE = FAKE_SERVICE.replace('health_timeout = "1s"\n', 'health_timeout = "1s"\nbuild = "{build}"\n')


def test_a_build_command_runs_before_green_starts_with_the_deploy_values(make, tmp_path):
    d, fake, _ = make(extra=BUILT_SERVICE.format(build="echo built $RECESS_SERVICE $RECESS_VERSION > built.txt"))
    result = deploy_and_approve(d, "v2")
    assert result["status"] == "succeeded"
    steps = rows.steps(d.store, result["id"])
    assert [s["name"] for s in steps][:2] == ["build", "start_green"]
    assert steps[0]["status"] == "succeeded" and "the build command succeeded" in steps[0]["detail"]
    assert (tmp_path / "built.txt").read_text().strip() == "built web v2"  # run in the config's folder


def test_a_failed_build_fails_the_deploy_before_anything_starts_with_its_last_40_lines(make):
    build = "for i in $(seq 1 60); do echo line $i; done; echo compiler said no; exit 3"
    d, fake, _ = make(extra=BUILT_SERVICE.format(build=build))
    result = deploy_and_approve(d, "v2")
    assert result["status"] == "failed" and "the build command exited 3" in result["outcome"]
    assert [s["name"] for s in rows.steps(d.store, result["id"])] == ["build"]
    assert not [c for c in fake.calls if c[0] in ("start", "stop", "shift")]  # nothing was touched
    text = d.notify.text()
    assert "last 40 lines" in text and "compiler said no" in text and "line 22" in text and "line 21\n" not in text
    assert "nothing was started and the traffic was not touched" in text.lower()


def test_without_a_build_the_step_is_skipped_saying_why(make):
    d, _, _ = make()
    result = deploy_and_approve(d, "v2")
    build = rows.steps(d.store, result["id"])[0]
    assert (build["name"], build["status"], build["detail"]) == ("build", "skipped", "skipped: no build configured")


def test_build_progress_is_one_line_edited_at_most_every_5_seconds():
    from platforms.build import Throttled

    now = [0.0]
    said: list[str] = []
    progress = Throttled(said.append, monotonic=lambda: now[0])
    for t, text in ((0.0, "step 1/4"), (1.0, "step 2/4"), (4.9, "step 3/4"), (5.0, "step 4/4"), (9.0, "x"), (10.1, "y")):
        now[0] = t
        progress(text)
    assert said == ["step 1/4", "step 4/4", "y"]


def test_a_notifier_line_edited_in_place_keeps_its_place_in_the_thread():
    notes = Notes()
    notes.thread(1, "started")
    notes.thread_line(1, "build", "build: step 1/3")
    notes.thread(1, "other")
    notes.thread_line(1, "build", "build: step 3/3")
    assert notes.text() == "started\nbuild: step 3/3\nother"
