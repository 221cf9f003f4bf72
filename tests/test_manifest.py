"""The Slack app manifests import cleanly: they validate against Slack's v1 schema and match the code."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "tests/data/manifest-schema/manifest.schema.1.0.0.json").read_text())


@pytest.mark.parametrize("name", ["manifest.yml", "manifest.socket-mode.yml"])
def test_manifest_validates_against_slacks_schema(name):
    manifest = yaml.safe_load((ROOT / name).read_text())
    jsonschema.validate(manifest, SCHEMA)


@pytest.mark.parametrize("name", ["manifest.yml", "manifest.socket-mode.yml"])
def test_manifest_declares_the_four_commands_home_and_interactivity(name):
    manifest = yaml.safe_load((ROOT / name).read_text())
    commands = {c["command"]: c for c in manifest["features"]["slash_commands"]}
    assert set(commands) == {"/deploy", "/rollback", "/window", "/flag"}
    assert all(c["usage_hint"] for c in commands.values())
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["settings"]["event_subscriptions"]["bot_events"] == ["app_home_opened"]


def test_socket_mode_variant_has_no_request_urls():
    manifest = yaml.safe_load((ROOT / "manifest.socket-mode.yml").read_text())
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert "request_url" not in manifest["settings"]["interactivity"]
    assert all("url" not in c for c in manifest["features"]["slash_commands"])


@pytest.mark.parametrize("name", ["manifest.yml", "manifest.socket-mode.yml"])
def test_manifest_scopes_are_the_ones_the_code_calls(name):
    manifest = yaml.safe_load((ROOT / name).read_text())
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    code = "\n".join(p.read_text() for p in (ROOT / "bot").rglob("*.py"))
    used = {"commands"}
    if "chat_postMessage" in code or "chat_update" in code:
        used.add("chat:write")
    if "users_info" in code:
        used.add("users:read")
    if "usergroups_users_list" in code:
        used.add("usergroups:read")
    if "conversations_history" in code or "conversations_replies" in code:
        # the outbox's look-up of a post it may have made before a crash: public and private channels
        used |= {"channels:history", "groups:history"}
    assert scopes == used
