"""An application's view: the real OpenFeature SDK with the OFREP provider, pointed at a running
recess, gets the values set through /flag for several schools and roles."""

from __future__ import annotations

import pytest
from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from tests.harness import APPROVER_1, start_server
from tests.kit.slack import FakeSlack


@pytest.fixture(scope="module")
def recess(tmp_path_factory):
    slack = FakeSlack()
    srv = start_server(tmp_path_factory.mktemp("openfeature"), slack)
    for text in (
        'create gradebook_v2 "New gradebook"',
        "on gradebook_v2 tenant=lincoln-high",
        "off gradebook_v2 tenant=lincoln-high role=student",
        "rollout gradebook_v2 100 role=admin",
        "on ai_safety_v2 role=teacher",
        "kill portfolio_enabled",
    ):
        assert srv.command("/flag", text, user=APPROVER_1).status_code == 200
    yield srv
    srv.stop()
    slack.close()


@pytest.fixture
def client(recess):
    provider = OFREPProvider(recess.url, headers_factory=lambda: {"Authorization": "Bearer test-key-for-ofrep-0001"}, timeout=5)
    api.set_provider(provider, domain="recess-tests")
    yield api.get_client(domain="recess-tests")
    api.clear_providers()


def ctx(user: str, tenant: str | None = None, role: str | None = None) -> EvaluationContext:
    attributes = {k: v for k, v in (("tenant", tenant), ("role", role)) if v}
    return EvaluationContext(targeting_key=user, attributes=attributes)


@pytest.mark.parametrize(
    "user, tenant, role, value, reason",
    [
        ("t-1", "lincoln-high", "teacher", True, Reason.TARGETING_MATCH),
        ("s-1", "lincoln-high", "student", False, Reason.TARGETING_MATCH),
        ("a-1", "la-elementary", "admin", True, Reason.SPLIT),
        ("t-2", "la-elementary", "teacher", False, Reason.STATIC),
    ],
)
def test_schools_and_roles_get_the_values_set_through_slash_flag(client, user, tenant, role, value, reason):
    details = client.get_boolean_details("gradebook_v2", not value, ctx(user, tenant, role))
    assert details.error_code is None, details.error_message
    assert (details.value, details.reason, details.variant) == (value, reason, "on" if value else "off")


def test_role_override_and_kill_switch_reach_the_sdk(client):
    teacher = client.get_boolean_details("ai_safety_v2", False, ctx("t-9", "la-elementary", "teacher"))
    assert (teacher.value, teacher.reason, teacher.flag_metadata) == (True, Reason.TARGETING_MATCH, {"scope": "role=teacher"})
    assert client.get_boolean_value("ai_safety_v2", True, ctx("s-9", "la-elementary", "student")) is False
    killed = client.get_boolean_details("portfolio_enabled", True, ctx("s-9", "lincoln-high", "student"))
    assert (killed.value, killed.reason) == (False, Reason.DISABLED)


def test_a_change_in_slack_is_seen_by_the_next_evaluation(client, recess):
    recess.command("/flag", 'create parent_portal "Parent portal"', user=APPROVER_1)
    context = ctx("p-3", "la-elementary", "parent")
    assert client.get_boolean_value("parent_portal", True, context) is False
    recess.command("/flag", "on parent_portal tenant=la-elementary", user=APPROVER_1)
    assert client.get_boolean_value("parent_portal", False, context) is True


def test_unknown_flags_and_missing_keys_fall_back_to_the_code_default(client, recess):
    missing = client.get_boolean_details("no_such_flag", True, ctx("u-1"))
    assert missing.value is True and missing.error_code == ErrorCode.FLAG_NOT_FOUND
    recess.command("/flag", 'create beta_quizzes "Quizzes beta"', user=APPROVER_1)
    recess.command("/flag", "rollout beta_quizzes 30", user=APPROVER_1)
    no_key = client.get_boolean_details("beta_quizzes", True, EvaluationContext(attributes={"tenant": "lincoln-high"}))
    assert no_key.value is True and no_key.error_code == ErrorCode.TARGETING_KEY_MISSING


def test_a_wrong_api_key_gives_the_code_default(recess):
    api.set_provider(OFREPProvider(recess.url, headers_factory=lambda: {"X-API-Key": "nope"}), domain="recess-bad-key")
    try:
        details = api.get_client(domain="recess-bad-key").get_boolean_details("ai_safety_v2", True, ctx("u-1"))
        assert details.value is True and details.error_code == ErrorCode.GENERAL
    finally:
        api.clear_providers()
