"""The App Home tab: the window verdict now, and the freezes ahead."""

from __future__ import annotations

from slack_bolt import App

from bot.runtime import Runtime
from bot.views.common import context, header, render, section
from bot.views.deploy import STATUS_ICON
from bot.views.window import freeze_line, next_window_line
from commands import freezes
from storage import deploys as deploy_rows


def home_view(rt: Runtime, user: str, tz: str) -> dict:
    now = rt.now()
    verdict = freezes.current_calendar(rt.cfg, rt.store).verdict(now)
    blocks = [header("recess")]
    if verdict.safe:
        blocks.append(section(":large_green_circle: *Safe to deploy now.*"))
    else:
        blocks.append(section(f":red_circle: *Blocked now:* {verdict.reason}"))
        blocks.append(section(next_window_line(verdict, tz, now)))
    ahead = freezes.list_freezes(rt.cfg, rt.store, now)
    if ahead:
        blocks.append(section("*Freezes*\n" + "\n".join(freeze_line(f, tz) for f in ahead[:20])))
    recent = deploy_rows.history(rt.store, None, 8)
    if recent:
        lines = [f"{STATUS_ICON.get(d['status'], '')} #{d['id']} {d['service']} *{d['version']}* ({d['env']}): "
                 f"{d['status'].replace('_', ' ')}" for d in recent]
        blocks.append(section("*Recent deploys*\n" + "\n".join(lines)))
    blocks.append(context("`/deploy`, `/rollback`, `/window`, `/flag` — add `help` to any of them for usage."))
    return {"type": "home", "blocks": render(blocks[:100])}


def register(app: App, rt: Runtime) -> None:
    @app.event("app_home_opened")
    def publish_home(event, ack) -> None:  # noqa: ANN001
        ack()
        user = event.get("user")
        if not user or event.get("tab", "home") != "home":
            return

        def publish() -> None:
            from bot.runtime import user_timezone

            rt.client.views_publish(user_id=user, view=home_view(rt, user, user_timezone(rt, user)))

        rt.submit(publish)
