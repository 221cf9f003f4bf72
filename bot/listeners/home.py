"""App Home as the deploy dashboard, for the viewer in their timezone.

What is live where (since when, by whom, the kept version), what waits on the viewer first, what
runs and what is queued, the window now and how long it stays safe, the last 10 deploys, and the
flags, with on / off / default per flag for one school when the viewer is a flag admin. The view
stays within Slack's Home limits (100 blocks, 250 kB): past them, flags are cut with a pointer to
the web dashboard.

Refresh: everyone who opened the tab within `[dashboard] home_viewers` gets it republished when
what it shows changed (checked every `[dashboard] home_refresh`), at most HOME_PUBLISHES_PER_PASS
per pass, so views.publish stays far inside its Tier 4 limit (100+ per minute).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from typing import Any

from slack_bolt import App
from slack_sdk.models.blocks import (
    ActionsBlock,
    Option,
    RadioButtonsElement,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.models.blocks.basic_components import MarkdownTextObject

from bot.runtime import Runtime, user_timezone
from bot.views.common import button, context, divider, escape_mrkdwn, header, section, trim
from bot.views.deploy import STATUS_ICON, thread_link
from bot.views.window import freeze_line, next_window_line
from commands import dashboard as dash
from commands.config import format_duration
from commands.flags import Change, FlagBook, FlagError, Scope, Unchanged
from commands.freezes import current_calendar, list_freezes
from commands.windows import format_local
from storage import deploys as rows

log = logging.getLogger("recess.home")

HOME_BLOCKS = 100
HOME_BYTES = 250_000
HOME_PUBLISHES_PER_PASS = 25
FLAG_TOGGLE_ACTION = "home_flag_set"
TENANT_PICK_ACTION = "home_flag_tenant"
LINK_ACTION = "home_dashboard_link"


def _chunks(title: str, lines: list[str], limit: int = 2900) -> list[SectionBlock]:
    """Lines under a bold title, as few sections as Slack's 3000 characters per section allow."""
    out, current = [], f"*{title}*"
    for line in lines:
        if len(current) + 1 + len(line) > limit:
            out.append(section(current))
            current = ""
        current = f"{current}\n{line}" if current else line
    out.append(section(current))
    return out


def _who(d: dict[str, Any]) -> str:
    if d.get("requested_by"):
        return escape_mrkdwn(d["requested_by"])
    r = d.get("requester") or "?"
    return f"<@{r}>" if r[:1] in ("U", "W") else escape_mrkdwn(r)


def _link(d: dict[str, Any]) -> str:
    link = thread_link(d)
    return f"<{link}|#{d['id']}>" if link.startswith("https://") else f"#{d['id']}"


def _what(d: dict[str, Any]) -> str:
    """'web *v2*', or for a release its members on one line: 'release k12: core v1 → v2, web v1 → v2'."""
    if rows.is_release(d):
        return f"{dash.release_title(d)}: {escape_mrkdwn(dash.release_summary(d))}"
    return f"{d['service']} *{escape_mrkdwn(d['version'])}*"


def home_view(rt: Runtime, user: str, tz: str, *, notice: str | None = None) -> dict:
    now = rt.now()
    calendar = current_calendar(rt.cfg, rt.store)
    ov = dash.overview(rt.cfg, rt.store, calendar, now=now)
    blocks: list[Any] = [header("recess: deploys at a glance")]
    if notice:
        blocks.append(section(notice))
    link = rt.extras.get("home_links", {}).pop(user, None)
    if link:
        blocks.append(section(f":key: <{link}|Open the web dashboard>: signs you in once, within "
                              f"{format_duration(rt.cfg.dashboard.link_ttl)}. Only you see this."))
    if ov.verdict.safe:
        stretch = ov.safe_until(tz) or "safe"
        blocks.append(section(f":large_green_circle: *Safe to deploy now*: {stretch}."))
    else:
        blocks.append(section(f":red_circle: *Blocked now:* {ov.verdict.reason}"))
        blocks.append(section(next_window_line(ov.verdict, tz, now)))
    blocks.append(ActionsBlock(block_id="home_links", elements=[button("Open the web dashboard", LINK_ACTION, "open")]))

    lines = []
    for s in ov.services:
        if s.live is None:
            lines.append(f"• *{s.service}* ({s.env}): nothing live")
            continue
        line = (f"• *{s.service}* ({s.env}): *{escape_mrkdwn(s.live['version'])}* since "
                f"{format_local(s.live['traffic_at'], tz, reference=now)} by {_who(s.live)}")
        if s.kept_version:
            line += f"; kept {escape_mrkdwn(s.kept_version)} until {format_local(s.kept_until, tz, reference=now)}"
        if s.release:
            line += f" (release {s.release['service']} {_link(s.release)})"
        lines.append(line)
    if lines:
        blocks += _chunks("Live", lines)

    def can_approve(d: dict[str, Any]) -> bool:
        return bool(rt.policy.can_approve(user, d["requester"]))

    waiting = sorted(ov.waiting, key=lambda d: (not can_approve(d), d["id"]))
    work = []
    for d in waiting:
        mark = " *waiting on you*" if can_approve(d) else ""
        work.append(f":large_yellow_circle: {_link(d)} {_what(d)} to {d['env']}: "
                    f"waiting for approval{mark} (asked by {_who(d)})")
    for d in ov.in_progress:
        took = dash.duration({**d, "finished_at": now}) if d.get("started_at") else None
        work.append(f"{STATUS_ICON.get(d['status'], '')} {_link(d)} {_what(d)} to {d['env']}: "
                    f"{d['status'].replace('_', ' ')}" + (f" for {format_duration(took)}" if took else ""))
    for d in ov.queued:
        until = f" until {format_local(d['queued_until'], tz, reference=now)}" if d.get("queued_until") else ""
        work.append(f":hourglass_flowing_sand: {_link(d)} {_what(d)} to {d['env']}: "
                    f"{d['status']}{until}")
    if work:
        blocks += _chunks("In flight", work[:40])

    ahead = list_freezes(rt.cfg, rt.store, now)
    if ahead:
        blocks.append(section("*Freezes*\n" + "\n".join(freeze_line(f, tz) for f in ahead[:10])))
    if ov.recent:
        recent = []
        for d in ov.recent:
            took = dash.duration(d)
            recent.append(f"{STATUS_ICON.get(d['status'], '')} {_link(d)} {_what(d)} "
                          f"({d['env']}): {d['status'].replace('_', ' ')}" + (f", {format_duration(took)}" if took else ""))
        blocks += _chunks("Recent deploys", recent)

    rendered = [b.to_dict() for b in blocks]
    rendered += _flag_dicts(rt, user, room=HOME_BLOCKS - len(rendered) - 1)
    rendered.append(context("`/deploy`, `/rollback`, `/window`, `/flag`: add `help` to any of them for usage. "
                            "`/deploy dashboard` signs you in to the web dashboard.").to_dict())
    view = {"type": "home", "blocks": rendered[:HOME_BLOCKS]}
    while len(json.dumps(view)) > HOME_BYTES and len(view["blocks"]) > 2:
        view["blocks"].pop(-2)
    return view


def _flag_dicts(rt: Runtime, user: str, *, room: int) -> list[dict[str, Any]]:
    """The flag blocks, checked by slack_sdk and turned into dicts once per flag snapshot, school
    and kind of viewer: most of a Home view's building time is that checking, and flags change
    rarely while many people open the tab."""
    book = FlagBook.for_store(rt.store)
    tenants = [t.id for t in rt.cfg.tenants]
    admin = bool(rt.policy.can_change_flags(user)) and bool(tenants)
    chosen = rt.extras.setdefault("home_tenant", {}).get(user)
    key = (book.snapshot.version, admin, chosen if chosen in tenants else None, room)
    cache: dict[Any, list[dict[str, Any]]] = rt.extras.setdefault("home_flag_cache", {})
    hit = cache.get(key)
    if hit is None:
        if len(cache) > 64:
            cache.clear()
        hit = cache[key] = [b.to_dict() for b in _flag_blocks(rt, user, room=room, admin=admin)]
    return hit


def _flag_blocks(rt: Runtime, user: str, *, room: int, admin: bool) -> list[Any]:
    flags = sorted(FlagBook.for_store(rt.store).flags(), key=lambda f: f.key)
    if not flags:
        return []
    tenants = [t.id for t in rt.cfg.tenants]
    out: list[Any] = [divider()]
    if not admin:
        lines = []
        for f in flags:
            state = "killed" if f.killed else (f"{f.rollout}%" if f.rollout is not None else ("on" if f.default else "off"))
            scoped = len(f.overrides)
            lines.append(f"• `{f.key}`: {state}" + (f" ({scoped} override{'s' * (scoped != 1)})" if scoped else ""))
        return out + _chunks("Flags", lines)
    chosen = rt.extras.setdefault("home_tenant", {}).get(user)
    if chosen not in tenants:
        chosen = tenants[0]
    options = [Option(text=t[:75], value=t[:150]) for t in tenants[:100]]
    out.append(SectionBlock(
        block_id="home_flags_tenant",
        text=MarkdownTextObject(text=f"*Flags for* {escape_mrkdwn(chosen)}: on, off, or the flag's default"),
        accessory=StaticSelectElement(action_id=TENANT_PICK_ACTION, options=options,
                                      initial_option=next(o for o in options if o.value == chosen[:150]),
                                      placeholder="School")))
    shown = flags[: max(room - len(out) - 1, 0)]
    for f in shown:
        st = dash.tenant_state(f, chosen)
        state, current = (st.state if st.own else f"{st.state} (default)"), st.toggle
        radios = [Option(text=v, value=v) for v in ("on", "off", "default")]
        out.append(SectionBlock(
            block_id=f"flag|{chosen}|{f.key}"[:255],
            text=MarkdownTextObject(text=trim(f"`{f.key}`: {state}" + (" · *killed*" if f.killed else "")
                                              + (f"\n{escape_mrkdwn(f.description)}" if f.description else ""), 2900)),
            accessory=RadioButtonsElement(action_id=FLAG_TOGGLE_ACTION, options=radios,
                                          initial_option=next(o for o in radios if o.value == current))))
    if len(shown) < len(flags):
        out.append(context(f"{len(flags) - len(shown)} more flags: the web dashboard's Flags page lists them all."))
    return out


# -- publishing and refreshing ------------------------------------------------------------------


def publish(rt: Runtime, user: str, *, notice: str | None = None) -> None:
    rt.client.views_publish(user_id=user, view=home_view(rt, user, user_timezone(rt, user), notice=notice))


def _viewers(rt: Runtime) -> dict[str, float]:
    return rt.extras.setdefault("home_viewers", {})


def refresh(rt: Runtime, *, monotonic: Any = time.monotonic) -> int:
    """Republishes App Home to recent viewers when what it shows changed; returns how many."""
    state = rt.extras.setdefault("home_refresh", {"mark": None, "due": []})
    now = rt.now()
    mark = (dash.fingerprint(rt.store), current_calendar(rt.cfg, rt.store).is_safe(now), now.replace(second=0, microsecond=0))
    viewers = _viewers(rt)
    horizon = rt.cfg.dashboard.home_viewers.total_seconds()
    t = monotonic()
    for user, opened in list(viewers.items()):
        if t - opened > horizon:
            viewers.pop(user, None)
    if mark != state["mark"]:
        state["mark"] = mark
        state["due"] = [u for u in viewers if u not in state["due"]] + state["due"]
    sent = 0
    while state["due"] and sent < HOME_PUBLISHES_PER_PASS:
        user = state["due"].pop(0)
        if user not in viewers:
            continue
        try:
            publish(rt, user)
        except Exception:
            log.exception("App Home refresh for %s failed", user)
        sent += 1
    return sent


def register(app: App, rt: Runtime) -> None:
    lock = threading.Lock()

    @app.event("app_home_opened")
    def publish_home(event, ack) -> None:  # noqa: ANN001
        ack()
        user = event.get("user")
        if not user or event.get("tab", "home") != "home":
            return
        with lock:
            _viewers(rt)[user] = time.monotonic()
        rt.submit(publish, rt, user)

    @app.action(LINK_ACTION)
    def dashboard_link(ack, body) -> None:  # noqa: ANN001
        ack()
        user = body["user"]["id"]

        def give() -> None:
            from bot.dashboard import signin_url

            token = dash.issue_link(rt.cfg, rt.store, user, now=rt.now())
            rt.extras.setdefault("home_links", {})[user] = signin_url(rt, token)
            publish(rt, user)

        rt.submit(give, on=rt.answers)

    @app.action(TENANT_PICK_ACTION)
    def pick_tenant(ack, body) -> None:  # noqa: ANN001
        ack()
        user = body["user"]["id"]
        chosen = (body["actions"][0].get("selected_option") or {}).get("value", "")
        if chosen in [t.id for t in rt.cfg.tenants]:
            rt.extras.setdefault("home_tenant", {})[user] = chosen
        rt.submit(publish, rt, user, on=rt.answers)

    @app.action(FLAG_TOGGLE_ACTION)
    def toggle_flag(ack, body) -> None:  # noqa: ANN001
        ack()
        user = body["user"]["id"]
        action = body["actions"][0]
        value = (action.get("selected_option") or {}).get("value", "")
        _, tenant, key = (action.get("block_id", "").split("|", 2) + ["", "", ""])[:3]

        def apply() -> None:
            from bot.listeners.flag import apply_change

            notice = None
            if value not in ("on", "off", "default"):
                notice = f":warning: `{escape_mrkdwn(value)}` is not on, off or default; nothing changed."
            else:
                change = Change("clear" if value == "default" else value, key, Scope(tenant=tenant))
                try:
                    apply_change(rt, user, change, f"App Home: {value} {key} tenant={tenant}")
                    notice = f":white_check_mark: `{key}` is {value} for {escape_mrkdwn(tenant)}: audited and announced."
                except Unchanged:
                    pass
                except FlagError as exc:
                    notice = f":warning: {escape_mrkdwn(str(exc))}; nothing changed."
            publish(rt, user, notice=notice)

        rt.submit(apply, on=rt.answers)

    every = rt.cfg.dashboard.home_refresh.total_seconds()
    if every > 0:
        rt.scheduler.add_job(refresh, "interval", seconds=every, args=[rt], id="home-refresh", replace_existing=True,
                             coalesce=True, max_instances=1, next_run_time=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=every))
