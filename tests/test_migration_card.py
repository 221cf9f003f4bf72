"""The migration report on the request card: pending files, blocking and warning findings,
approval refused while something blocks, and contract changes only after blue is retired."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from commands.config import load_config
from commands.deploys import Deployer, DeployError
from commands.policy import Policy
from storage import applied_migrations
from storage import deploys as rows
from storage.db import Store
from tests.fake_platform import FakePlatform
from tests.harness import APPROVER_1, APPROVER_2, ENGINEER, FAKE_SERVICE, FakeClock, write_config
from tests.test_deploy_commands import card_post, responses
from tests.test_pipeline import AFTER_SCHOOL, Notes

SERVICE = FAKE_SERVICE.replace('health_timeout = "1s"', 'health_timeout = "1s"\nmigrations = "migrations"')

SAFE = "CREATE TABLE attendance (id bigint PRIMARY KEY, student_id bigint NOT NULL, day date NOT NULL);\n"
BLOCKING = "-- index for the gradebook\nCREATE INDEX grades_student ON grades (student_id);\n"
CONTRACT = "ALTER TABLE students DROP COLUMN nickname;\n"


def write_migrations(tmp_path, files: dict[str, str]) -> None:  # noqa: ANN001
    folder = tmp_path / "migrations"
    folder.mkdir(exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)


@pytest.fixture
def deployer(tmp_path):
    def make(files: dict[str, str]) -> tuple[Deployer, FakePlatform]:
        write_migrations(tmp_path, files)
        cfg = load_config(write_config(tmp_path, SERVICE))
        fake = FakePlatform(live="v1")
        d = Deployer(cfg=cfg, store=Store(cfg.database_path), policy=Policy(cfg), notify=Notes(),
                     platform_for=lambda s, e: fake, clock=FakeClock(AFTER_SCHOOL), run_async=lambda fn: fn(),
                     sleep=lambda s: None)
        rows.insert(d.store, service="web", env="production", version="v1", requester=ENGINEER, status="succeeded",
                    traffic_at=dt.datetime(2027, 1, 1, tzinfo=dt.UTC), blue_retired=1)
        return d, fake

    return make


def test_card_shows_pending_migrations_with_blocking_findings_and_approval_is_refused(server_factory, slack, tmp_path):
    write_migrations(tmp_path, {"0001_attendance.sql": SAFE, "0002_grades_index.sql": BLOCKING})
    srv = server_factory(SERVICE, clock=FakeClock(AFTER_SCHOOL))
    srv.rt.extras["platform_factory"] = lambda cfg, s, e: FakePlatform(live="v1")
    srv.command("/deploy", "web v2")
    card = card_post(slack, 1, srv.rt.store)
    blocks = json.dumps(card.params["blocks"])
    assert "Migrations:* 2 pending, 1 blocking" in blocks
    assert "0002_grades_index.sql:2" in blocks and "require-concurrent-index-creation" in blocks
    assert "CONCURRENTLY" in blocks  # the fix is on the card
    assert "Approval is refused" in blocks
    srv.click("deploy_approve", 1, user=APPROVER_1, message_ts=rows.get(srv.rt.store, 1)["card_ts"])
    slack.wait_for(lambda s: "migration finding blocks" in responses(s))
    assert rows.get(srv.rt.store, 1)["status"] == "pending"


def test_warnings_do_not_block_approval_and_applied_files_are_not_reported_again(deployer):
    d, fake = deployer({"0001_attendance.sql": SAFE})
    req = d.request(actor=ENGINEER, service="web", version="v2")
    assert req["lint"]["pending"] == ["0001_attendance.sql"]
    assert d.blocking_findings(req["id"]) == []
    assert d.approve(req["id"], APPROVER_1) == "approved"
    assert rows.get(d.store, req["id"])["status"] == "succeeded"
    assert applied_migrations.applied(d.store, "web", "production") == {"0001_attendance.sql"}
    again = d.request(actor=ENGINEER, service="web", version="v3")
    assert again["lint"]["pending"] == [] and again["lint"]["findings"] == []


def test_a_contract_change_blocks_while_blue_runs(deployer):
    d, _ = deployer({"0003_drop_nickname.sql": CONTRACT})
    req = d.request(actor=ENGINEER, service="web", version="v2", contract=True)
    # v1's deploy kept no blue here, so blue is retired: --contract is honoured.
    assert req["lint"]["contract"] and req["lint"]["contract_allowed"]
    assert req["approvals_needed"] == 2  # one extra approval for the contract change
    d.cancel(req["id"], ENGINEER)
    plain = d.request(actor=ENGINEER, service="web", version="v2")
    assert [f["rule"] for f in d.blocking_findings(plain["id"])] == ["ban-drop-column"]
    with pytest.raises(DeployError, match="block"):
        d.approve(plain["id"], APPROVER_1)


def test_contract_flag_is_not_enough_while_blue_is_still_kept(deployer):
    d, _ = deployer({})
    d.request(actor=ENGINEER, service="web", version="v2")
    d.approve(2, APPROVER_1)
    assert rows.get(d.store, 2)["blue_retired"] == 0  # v1 is kept for rollback
    (d.cfg.path("migrations") / "0003_drop_nickname.sql").write_text(CONTRACT)
    req = d.request(actor=ENGINEER, service="web", version="v3", contract=True)
    assert req["lint"]["contract_allowed"] is False
    assert d.blocking_findings(req["id"])
    with pytest.raises(DeployError, match="block"):
        d.approve(req["id"], APPROVER_2)


def test_a_migration_that_does_not_parse_is_a_blocking_finding(deployer):
    d, _ = deployer({"0004_broken.sql": "ALTER TABLE students ADD COLUMN;\n"})
    req = d.request(actor=ENGINEER, service="web", version="v2")
    blocking = d.blocking_findings(req["id"])
    assert blocking and "does not parse" in blocking[0]["message"]
