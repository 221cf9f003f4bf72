"""The Bolt app factory: one App per Runtime, with the WebClient the runtime was built with.

Tests point the client at a fake Slack (SLACK_API_URL). Listeners parse, call `commands/`, and
ack within milliseconds; slow work goes to the runtime's worker, never Bolt's small pool.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slack_bolt import App, BoltResponse
from slack_bolt.authorization import AuthorizeResult
from slack_sdk import WebClient

from bot.edge import redelivered_event
from bot.runtime import Runtime

log = logging.getLogger("recess.app")


def safe(listener: Callable[..., Any]) -> Callable[..., Any]:
    """A listener that fails answers the user with a reference, never a stack trace or a 500."""

    @functools.wraps(listener)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return listener(*args, **kwargs)
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("listener %s failed (ref %s)", listener.__name__, ref)
            ack = kwargs.get("ack")
            if ack is not None:
                try:
                    ack(text=f":boom: recess hit an internal error (ref {ref}). Check the deploy channel before trying again; the operator can find the details in the logs under that ref.", response_type="ephemeral")
                except Exception:
                    pass
            return None

    return wrapped


class _SafeApp(App):
    """Wraps every listener registered through command()/action()/event() in `safe`."""

    def command(self, *a: Any, **kw: Any):  # noqa: ANN201
        outer = super().command(*a, **kw)
        return lambda fn: outer(safe(fn))

    def action(self, *a: Any, **kw: Any):  # noqa: ANN201
        outer = super().action(*a, **kw)
        return lambda fn: outer(safe(fn))

    def event(self, *a: Any, **kw: Any):  # noqa: ANN201
        outer = super().event(*a, **kw)
        return lambda fn: outer(safe(fn))


def build_app(rt: Runtime, *, socket_mode: bool = False) -> App:
    token = rt.client.token or ""

    def authorize(**_: Any) -> AuthorizeResult:
        # One workspace, one bot token: no auth.test round trip on the request path.
        return AuthorizeResult(enterprise_id=None, team_id=None, bot_token=token, bot_user_id=None)

    # Bolt gets a token-less twin of the runtime's client: the token comes from `authorize`.
    bolt_client = WebClient(base_url=rt.client.base_url, timeout=rt.client.timeout, retry_handlers=rt.client.retry_handlers)
    app = _SafeApp(
        client=bolt_client,
        signing_secret=rt.signing_secret or ("socket-mode" if socket_mode else None),
        authorize=authorize,
        request_verification_enabled=not socket_mode,
        token_verification_enabled=False,
        ignoring_self_events_enabled=False,
        listener_executor=ThreadPoolExecutor(max_workers=64, thread_name_prefix="bolt-listener"),
    )

    @app.middleware
    def drop_redelivered_events(body: dict, next: Callable[[], BoltResponse]) -> BoltResponse | None:  # noqa: A002
        """Slack re-sends events (X-Slack-Retry-Num); an event_id seen within the hour (kept in
        SQLite, so a restart remembers it) is acknowledged and not acted on again."""
        if redelivered_event(rt, body):
            return BoltResponse(status=200, body="")
        return next()

    if socket_mode:
        # Over HTTP the edge (bot/server.py, bot/edge.py) refuses other workspaces before Bolt sees
        # a request; Socket Mode traffic never passes it, so the same rule is a middleware here.
        from bot import edge
        from bot.slack_client import make_client

        lookup = make_client(rt.client.token, rt.client.base_url, timeout=5, retries=False)
        workspaces = rt.extras.setdefault("workspaces", edge.Workspaces(
            rt.cfg.access.teams, edge.auth_test_team(lookup), on_home=lambda team: rt.extras.__setitem__("home_team", team)))

        @app.middleware
        def home_workspace_only(body: dict, ack: Callable[..., Any], next: Callable[[], BoltResponse]) -> BoltResponse | None:  # noqa: A002
            if not isinstance(body, dict) or workspaces.serves(teams_of(body)):
                return next()
            log.warning("refused a Socket Mode request from team(s) %s: not the home workspace", teams_of(body))
            if body.get("type") == "event_callback":
                return ack()
            return ack(text=edge.NOT_HOME, response_type="ephemeral")

    from bot.listeners import deploy, flag, home, window

    for room in (window, home, deploy, flag):
        room.register(app, rt)
    return app


def teams_of(body: dict[str, Any]) -> list[str]:
    """The Slack team IDs a command, click or event says it comes from."""
    found = [body["team_id"]] if isinstance(body.get("team_id"), str) else []
    team, user = body.get("team"), body.get("user")
    if isinstance(team, dict) and isinstance(team.get("id"), str):
        found.append(team["id"])
    if isinstance(user, dict) and isinstance(user.get("team_id"), str):
        found.append(user["team_id"])
    return found
