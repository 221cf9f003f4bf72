"""A Slack stand-in for the offline demo: both sides of Slack, built on the test kit.

Towards recess it is Slack's Web API: the kit's fake Slack (tests/kit/slack.py), here with the
demo's people, channels and bot token, so it answers as strictly as Slack (unknown channels,
users and tokens are errors) and keeps the channel as Slack would show it, threads and edits
included. Towards people it is the Slack client: `command()` types a slash command and `click()`
presses a button on a message it holds, each sent by the kit's `SlackSender`, signed exactly as
Slack signs them, with a response URL that leads back here.

Everything people would see (channel messages, thread replies, card edits, ephemeral replies) is
also handed to `on_event` as it happens, and `Renderer` turns Block Kit into plain text lines for
a terminal.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

import httpx

from tests.kit.signer import SlackSender
from tests.kit.slack import Event, FakeSlack, Message, User

__all__ = ["Event", "Message", "Renderer", "SlackError", "SlackStandIn", "User"]

TEAM, APP, BOT = "T0SCHOOLS", "A0RECESS", "U0RECESS"


class SlackError(RuntimeError):
    """recess answered a request from "Slack" with something other than 200."""


class SlackStandIn(FakeSlack):
    def __init__(
        self,
        *,
        signing_secret: str,
        users: list[User],
        channels: dict[str, str],
        bot_token: str = "xoxb-demo",
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        super().__init__(token=bot_token, users=users, channels=channels, team_id=TEAM, bot_user=BOT,
                         on_event=on_event)
        self.signing_secret = signing_secret
        self.bot_token = bot_token
        self.request_url: str | None = None  # recess's /slack/events, set by connect()
        self._sender: SlackSender | None = None

    def connect(self, request_url: str) -> None:
        """Where Slack sends slash commands and button clicks (the app's Request URL)."""
        self.request_url = request_url
        self._sender = SlackSender(request_url.removesuffix("/slack/events"), self.signing_secret,
                                   team_id=TEAM, app_id=APP)

    def close(self) -> None:
        super().close()
        if self._sender is not None:
            self._sender.close()

    # -- what people do -----------------------------------------------------------------------

    def command(self, user: str, command: str, text: str = "", *, channel: str) -> Message | None:
        """Types `/command text` in `channel`; returns the ephemeral reply recess answered with."""
        response = self._people().command(
            command, text, user=user, channel=channel, channel_name=self.channels.get(channel, channel),
            user_name=self.users[user].name, response_url=self.response_url_for(user, channel))
        reply = _reply_of(response)
        return None if reply is None else self.deliver_reply(user, channel, None, reply)

    def click(self, user: str, message: Message, label: str) -> dict[str, Any] | None:
        """Presses the button `label` on `message` (confirming its dialog, if it has one).

        Returns the button's confirm dialog, so the caller can show what was asked.
        """
        block_id, button = message.button(label)
        response = self._people().action(
            button["action_id"], button.get("value") or "", user=user, message_ts=message.ts,
            channel=message.channel, block_id=block_id, ephemeral=message.ephemeral_to is not None,
            message=message.as_slack(), button=button, user_name=self.users[user].name,
            response_url=self.response_url_for(user, message.channel, message))
        reply = _reply_of(response)
        if reply is not None:
            self.deliver_reply(user, message.channel, message, reply)
        return button.get("confirm")

    def _people(self) -> SlackSender:
        if self._sender is None:
            raise SlackError("the stand-in is not connected to an app (call connect())")
        return self._sender


def _reply_of(response: httpx.Response) -> dict[str, Any] | None:
    """The ack body Slack shows the person who typed or clicked, if any."""
    if response.status_code != 200:
        raise SlackError(f"the app answered HTTP {response.status_code}: {response.text[:300]}")
    if not response.content.strip():
        return None
    if "json" in response.headers.get("content-type", ""):
        return response.json()
    return {"text": response.text}


# -- showing messages in a terminal ------------------------------------------------------------

EMOJI = {
    "arrows_counterclockwise": "🔄", "alarm_clock": "⏰", "ballot_box_with_check": "☑️", "boom": "💥",
    "fast_forward": "⏩", "hourglass": "⌛", "hourglass_flowing_sand": "⏳", "information_source": "ℹ️",
    "large_blue_circle": "🔵", "large_green_circle": "🟢", "large_yellow_circle": "🟡",
    "leftwards_arrow_with_hook": "↩️", "memo": "📝", "no_entry": "⛔", "no_entry_sign": "🚫",
    "recycle": "♻️", "red_circle": "🔴", "rocket": "🚀", "rotating_light": "🚨", "school": "🏫",
    "seedling": "🌱", "snowflake": "❄️", "sunny": "☀️", "sunrise": "🌅", "tada": "🎉",
    "triangular_flag_on_post": "🚩", "warning": "⚠️", "wastebasket": "🗑️", "white_check_mark": "✅",
    "white_circle": "⚪", "x": "❌", "link": "🔗", "octagonal_sign": "🛑", "broom": "🧹",
    "hammer_and_wrench": "🛠️",
}

_EMOJI = re.compile(r":([a-z0-9_+-]+):")
# <!date^EPOCH^FORMAT|fallback>: Slack shows FORMAT in each reader's own timezone.
_DATE = re.compile(r"<!date\^(\d+)\^([^|>]*)(?:\|([^>]*))?>")
_DATE_TOKENS = {"{date_short_pretty}": "%b %-d", "{date_short}": "%b %-d, %Y", "{date_pretty}": "%B %-d",
                "{date}": "%B %-d, %Y", "{date_num}": "%Y-%m-%d", "{time}": "%H:%M", "{time_secs}": "%H:%M:%S"}
_MENTION = re.compile(r"<([@#!])([A-Z0-9^]+)(?:\|([^>]*))?>")
_LINK = re.compile(r"<((?:https?|mailto):[^|>]+)(?:\|([^>]*))?>")
_BOLD = re.compile(r"(?<![\w*])\*([^*\n]+)\*(?![\w*])")


class Renderer:
    """Slack mrkdwn and Block Kit as plain text: names for IDs, emoji for shortcodes."""

    def __init__(self, users: dict[str, User], channels: dict[str, str], *, bold: Callable[[str], str] = str,
                 tz: str = "UTC") -> None:
        self.users = users
        self.channels = channels
        self.bold = bold
        self.tz = tz  # the reader's timezone: Slack's date tokens are shown in it

    def date(self, m: re.Match[str]) -> str:
        import datetime as dt
        from zoneinfo import ZoneInfo

        at = dt.datetime.fromtimestamp(int(m.group(1)), ZoneInfo(self.tz))
        out = m.group(2)
        for token, fmt in _DATE_TOKENS.items():
            out = out.replace(token, at.strftime(fmt))
        return out + ("" if self.tz == "UTC" else f" {at.tzname()}")

    def text(self, mrkdwn: str) -> str:
        def mention(m: re.Match[str]) -> str:
            sigil, ident, label = m.groups()
            if sigil == "@":
                user = self.users.get(ident)
                return "@" + (user.name if user else label or ident)
            if sigil == "#":
                return "#" + (label or self.channels.get(ident, ident))
            return "@" + (label or ident.strip("^"))

        out = _DATE.sub(self.date, mrkdwn)
        out = _MENTION.sub(mention, out)
        out = _LINK.sub(lambda m: m.group(2) or m.group(1), out)
        out = _EMOJI.sub(lambda m: EMOJI.get(m.group(1), m.group(0)), out)
        out = out.replace("```", "")
        out = _BOLD.sub(lambda m: self.bold(m.group(1)), out)
        return html.unescape(out)

    def blocks(self, blocks: list[dict[str, Any]], fallback: str = "") -> list[str]:
        """One list of lines for a message; its `text` when it has no blocks."""
        if not blocks:
            return self.text(fallback).splitlines() or [""]
        lines: list[str] = []
        for block in blocks:
            kind = block.get("type")
            if kind == "header":
                lines.append(self.bold(self.text(block.get("text", {}).get("text", ""))))
            elif kind == "section":
                if block.get("text"):
                    lines += self.text(block["text"].get("text", "")).splitlines()
                for f in block.get("fields") or []:
                    lines += self.text(f.get("text", "")).splitlines()
            elif kind == "context":
                parts = [self.text(e.get("text", "")) for e in block.get("elements", []) if e.get("text")]
                lines += "  ".join(parts).splitlines()
            elif kind == "actions":
                labels = [f"[{e.get('text', {}).get('text', '?')}]" for e in block.get("elements", [])]
                lines.append(" ".join(labels))
            elif kind == "divider":
                continue
            else:
                lines.append(f"({kind} block)")
        return lines
