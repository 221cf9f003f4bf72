"""`make demo`: the whole recess story, offline, in about fifteen seconds.

    .venv/bin/python -m demo.run

No Slack account and no network: a Slack stand-in (demo/slack_standin.py) plays Slack, both the
Web API recess calls and the people who type commands and click buttons, signing every request
with the signing secret exactly as Slack does. recess runs in this process on its real HTTP
server (uvicorn, `POST /slack/events`), with SQLite in a temporary folder and a clock set to a
school evening. The demo app (demo/app.py) runs as real processes behind a real HAProxy.

The story, printed as the channel would show it:

1. `/window` and `/window at tomorrow 11:00`: when deploying is safe, across three timezones.
2. `/deploy web v1`: the first deploy puts the portal online through HAProxy; a small load
   (keep-alive clients asking for /version) starts and runs to the end.
3. `/deploy web v2`: the request card, a refused self-approval, an approval by a second person,
   then the blue-green deploy step by step in the card's thread.
4. `/rollback web`: the confirm dialog, one router call, traffic back on v1 (timed).
5. The requests each version answered, and the failures: 0, or the demo exits 1.
6. The dashboard, on this run's own store: `/deploy dashboard` signs dana in to the web pages
   (what is live, the deploy's steps, the DORA numbers), `GET /metrics`, and App Home.

Everything started here (HAProxy, the app processes, the servers) is stopped at the end, also
after Ctrl-C or a failure.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import os
import shlex
import signal
import socket
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from demo.slack_standin import Event, Message, Renderer, SlackStandIn, User
from tests.kit.load import Load

DEMO_DIR = Path(__file__).resolve().parent
ROOT = DEMO_DIR.parent
CONFIG = DEMO_DIR / "recess.demo.toml"
SECRET = "demo-signing-secret"
SERVICE, ENV = "web", "production"

DANA = User("U0DANA", "dana", "America/New_York")  # the engineer who deploys (an approver too)
PRIYA = User("U0PRIYA", "priya", "America/Los_Angeles")  # the second approver
DEPLOYS, ENG = "C0DEPLOYS", "C0ENG"
CHANNELS = {DEPLOYS: "deploys", ENG: "eng"}

# A Tuesday in term time, after the last bell everywhere: 19:30 in New York is 16:30 in Phoenix
# and in Los Angeles, where school ends at 14:30 and 15:00.
EVENING = dt.datetime(2027, 3, 16, 19, 30, tzinfo=ZoneInfo("America/New_York"))

FINISHED = ("succeeded", "failed", "rolled_back", "cancelled", "rejected")


class DemoFailed(Exception):
    """The story did not happen as it should; the message says what went wrong."""


class DemoClock:
    """recess's clock in the demo: a school evening that moves on at the speed of real time."""

    def __init__(self, start: dt.datetime) -> None:
        self.start = start.astimezone(dt.UTC)
        self.t0 = time.monotonic()

    def __call__(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=time.monotonic() - self.t0)


# -- the terminal ------------------------------------------------------------------------------


class Style:
    def __init__(self, stream: Any) -> None:
        self.color = stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)


class Transcript:
    """Prints the channel as people would read it, as events arrive from the stand-in.

    `held()` keeps channel messages back until its block ends, so the reply to a command prints
    before the card it caused; `muted()` drops them (the first deploy is told in one line).
    """

    def __init__(self, renderer: Renderer, style: Style, out: Any = None) -> None:
        self.r = renderer
        self.style = style
        self.out = out or sys.stdout
        self._lock = threading.RLock()
        self._mode = "live"
        self._held: list[Event] = []
        self._last_update: dict[str, str] = {}

    def print(self, text: str = "") -> None:
        with self._lock:
            print(text, file=self.out, flush=True)

    def on_event(self, event: Event) -> None:
        with self._lock:
            if event.kind == "ephemeral":
                self.show(event)  # the person who typed sees it at once
            elif self._mode == "live":
                self.show(event)
            elif self._mode == "held":
                self._held.append(event)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._lock:
            self._mode = "held"
        try:
            yield
        finally:
            with self._lock:
                self._mode = "live"
                events, self._held = self._held, []
                for event in events:
                    self.show(event)

    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        with self._lock:
            self._mode = "muted"
        try:
            yield
        finally:
            with self._lock:
                self._mode = "live"

    # -- one event ----------------------------------------------------------------------------

    def show(self, event: Event) -> None:
        m = event.message
        if event.kind == "ephemeral":
            self.print(self.style.dim(f"  ┊ only visible to @{self.r.users[m.ephemeral_to].name} · recess"))
            for line in self.r.blocks(m.blocks, m.text):
                self.print(f"  ┊ {line}")
        elif event.kind == "posted":
            self.card(m)
        elif event.kind == "replied":
            lines = self.r.blocks(m.blocks, m.text)
            also = self.style.dim(f"  (also sent to #{CHANNELS.get(m.channel, m.channel)})") if m.broadcast else ""
            self.print(f"      ↳ {lines[0]}{also}")
            for line in lines[1:]:
                self.print(f"        {line}")
        elif event.kind == "updated":
            line = self.summary(m)
            if self._last_update.get(m.ts) != line:
                self._last_update[m.ts] = line
                self.print(self.style.dim("      ✎ card now: ") + line)

    def card(self, m: Message) -> None:
        where = "" if m.ephemeral_to else f"#{CHANNELS.get(m.channel, m.channel)} · "
        self.print(self.style.dim(f"  {where}recess"))
        for line in self.r.blocks(m.blocks, m.text):
            self.print(f"  ┃ {line}")

    def summary(self, m: Message) -> str:
        """A card edit in one line: its status line, and the step it is on."""
        status, step = "", ""
        for block in m.blocks:
            if block.get("type") == "section" and not status:
                status = self.r.text(block.get("text", {}).get("text", "")).splitlines()[0]
            elif block.get("type") == "context" and not step:
                texts = [e.get("text", "") for e in block.get("elements", [])]
                step = self.r.text(" ".join(texts)).split("  ·  ")[-1]
        return f"{status}  ·  {step}" if step else status


def chapter(t: Transcript, number: int, title: str) -> None:
    t.print()
    t.print(t.style.bold(f"── {number}. {title} ".ljust(78, "─")))


def typed(t: Transcript, user: User, channel: str, text: str) -> None:
    t.print(t.style.bold(f"@{user.name} in #{CHANNELS[channel]}:") + f" {text}")


def note(t: Transcript, text: str) -> None:
    t.print(t.style.dim(f"  » {text}"))


# -- setting the stage -------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    """Ports the kernel has just handed out, all distinct (the sockets are open together)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def demo_config(workdir: Path, listen: int, blue: int, green: int) -> Any:
    """demo/recess.demo.toml with this run's folder, ports and Python filled in."""
    from commands.config import parse_config

    data = tomllib.loads(CONFIG.read_text())
    data["bot"].update(database=str(workdir / "recess.db"), state_dir=str(workdir / "state"))
    web = data["services"][SERVICE]
    web["local"].update(listen=f"127.0.0.1:{listen}",
                        slots={"blue": f"127.0.0.1:{blue}", "green": f"127.0.0.1:{green}"})
    python = shlex.quote(sys.executable)
    for table, key in ((web["local"], "run"), (web, "smoke")):
        if table.get(key, "").startswith("python "):
            table[key] = python + table[key][len("python"):]
    return parse_config(data, source=str(CONFIG.relative_to(ROOT)), base_dir=DEMO_DIR)


def quiet_logging() -> None:
    """recess's own warnings and errors show; the libraries' chatter (Bolt, uvicorn) does not."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("  [log] %(levelname)s %(name)s: %(message)s"))
    ours = ("recess", "bot", "commands", "platforms", "storage")
    handler.addFilter(lambda record: record.levelno >= logging.ERROR or record.name.split(".")[0] in ours)
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    for name in ("slack_bolt", "uvicorn", "apscheduler", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.ERROR)


class Stage:
    """Everything the demo starts, and stops again: the stand-in, recess, HAProxy and the app."""

    def __init__(self, workdir: Path, transcript: Transcript) -> None:
        from bot.startup import preflight

        self.transcript = transcript
        self.load: Load | None = None
        self.slack: SlackStandIn | None = None
        self.rt: Any = None
        self.server: Any = None
        self.thread: threading.Thread | None = None
        recess_port, listen, blue, green = free_ports(4)
        self.cfg = demo_config(workdir, listen, blue, green)
        preflight(self.cfg)  # HAProxy, squawk and the holiday files, before anything starts
        self.url = f"http://127.0.0.1:{recess_port}"
        self.public = f"http://127.0.0.1:{listen}"
        self.slots = {"blue": blue, "green": green}
        self.clock = DemoClock(EVENING)
        # The app processes import demo.app; they run in the config's folder (demo/).
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

    def start(self) -> None:
        import uvicorn

        from bot.app import build_app
        from bot.runtime import build_runtime
        from bot.server import build_http_app
        from bot.slack_client import make_client

        self.slack = SlackStandIn(signing_secret=SECRET, users=[DANA, PRIYA], channels=CHANNELS,
                                  on_event=self.transcript.on_event)
        self.rt = build_runtime(self.cfg, client=make_client(self.slack.bot_token, self.slack.api_url),
                                clock=self.clock, signing_secret=SECRET)
        self.rt.extras["serve_url"] = self.url  # what `recess serve` sets: sign-in links point here
        self.rt.start()
        http = build_http_app(self.rt, build_app(self.rt))
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(http, host="127.0.0.1", port=port, log_level="error",
                                                    log_config=None, access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="recess-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise DemoFailed(f"recess's HTTP server did not start on port {port}")
            time.sleep(0.01)
        self.slack.connect(self.url + "/slack/events")

    def close(self) -> list[str]:
        """Stops everything that was started, in reverse order; returns what it stopped."""
        done = []
        if self.load is not None:
            self.load.stop()
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
            done.append("recess")
        if self.rt is not None:
            with contextlib.suppress(Exception):
                self.rt.stop()
                # A deploy cut short (Ctrl-C) may still be starting a process: let it finish first.
                waiter = threading.Thread(target=self.rt.worker.shutdown, kwargs={"wait": True}, daemon=True)
                waiter.start()
                waiter.join(timeout=5)
                self.rt.store.close()
            from platforms import make_platform

            try:
                # Reads the pid files under state_dir: stops both slots and HAProxy if they run.
                make_platform(self.cfg, SERVICE, ENV).shutdown()
                done += ["HAProxy", "the app processes"]
            except Exception as exc:  # say so: a process may be left behind
                self.transcript.print(f"could not stop HAProxy or the app processes: {exc}")
        if self.slack is not None:
            self.slack.close()
            done.append("the Slack stand-in")
        return done

    # -- what the story needs -----------------------------------------------------------------

    def command(self, user: User, command: str, text: str, channel: str = ENG) -> Message | None:
        typed(self.transcript, user, channel, f"{command} {text}".strip())
        return self.slack.command(user.id, command, text, channel=channel)

    def card(self, deploy_id: int) -> Message:
        """The request card of `deploy_id` in the deploy channel (the stand-in's copy of it)."""
        self.rt.outbox.flush()
        from storage import deploys as rows

        ts = (rows.get(self.rt.store, deploy_id) or {}).get("card_ts")
        for message in self.slack.channel_messages(DEPLOYS):
            if message.ts == ts:
                return message
        raise DemoFailed(f"deploy #{deploy_id}'s card never reached #{CHANNELS[DEPLOYS]}")

    def click(self, user: User, message: Message, label: str) -> None:
        self.transcript.print(self.transcript.style.bold(f"@{user.name} clicks [{label}]"))
        self.slack.click(user.id, message, label)

    def wait_finished(self, deploy_id: int, timeout: float = 30) -> dict[str, Any]:
        from storage import deploys as rows

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            d = rows.get(self.rt.store, deploy_id)
            if d and d["status"] in FINISHED:
                self.rt.outbox.flush()
                return d
            time.sleep(0.05)
        d = rows.get(self.rt.store, deploy_id)
        raise DemoFailed(f"deploy #{deploy_id} did not finish within {timeout:.0f} s (it is {d and d['status']})")

    def serving(self) -> str:
        return httpx.get(self.public + "/version", timeout=5).text.strip()


# -- the story ---------------------------------------------------------------------------------


def story(stage: Stage) -> Load:
    t = stage.transcript
    r = t.r

    chapter(t, 1, "When may we deploy? /window")
    now_ny = stage.clock().astimezone(ZoneInfo("America/New_York"))
    note(t, f"The demo's clock: {now_ny:%A %d %B %Y, %H:%M} in New York. Schools: lincoln-high (New York),")
    note(t, "mesa-middle (Phoenix, 07:30-14:30) and bay-elementary (Los Angeles); the district's holidays.")
    stage.command(DANA, "/window", "")
    stage.command(DANA, "/window", "at tomorrow 11:00")

    chapter(t, 2, "The portal goes live: /deploy web v1")
    with t.muted():
        stage.command(DANA, "/deploy", "web v1")
        card = stage.card(1)
        stage.click(PRIYA, card, "Approve")
        first = stage.wait_finished(1)
    if first["status"] != "succeeded":
        raise DemoFailed(f"the first deploy {first['status']}: {first['outcome']}")
    replies = stage.slack.replies(card)
    note(t, f"Deploy #1 went through the same card, approval and steps as v2 below ({len(replies)} thread replies).")
    t.print(f"      ↳ {r.blocks(replies[-1].blocks, replies[-1].text)[0]}")
    if stage.serving() != "v1":
        raise DemoFailed(f"the portal answers {stage.serving()!r}, not v1")
    slot = first["green_slot"]
    note(t, f"GET {stage.public}/version answers v1, through HAProxy (slot {slot} on :{stage.slots[slot]}).")
    # A few keep-alive clients asking the public address for /version, counting every answer.
    load = stage.load = Load(stage.public, clients=4, pause=0.01).start()
    time.sleep(0.5)
    note(t, f"Load: {load.clients} keep-alive clients now ask {stage.public}/version every {load.pause * 1000:.0f} ms, to the end.")

    chapter(t, 3, "A new release, approved by someone else: /deploy web v2")
    with t.held():
        stage.command(DANA, "/deploy", "web v2")
        stage.rt.outbox.flush()
    card = stage.card(2)
    edits = card.edits
    seen = len(stage.slack.ephemerals_to(DANA.id))
    stage.click(DANA, card, "Approve")
    stage.slack.wait_for(lambda s: len(s.ephemerals_to(DANA.id)) > seen)
    refusal = stage.slack.ephemerals_to(DANA.id)[-1].text
    if "another approver" not in refusal:
        raise DemoFailed(f"dana's approval of her own deploy was not refused: {refusal!r}")
    if card.edits != edits:
        raise DemoFailed("the card changed after a refused approval")
    note(t, "Refused, and the card is as it was: a deploy needs a second person.")
    stage.click(PRIYA, card, "Approve")
    second = stage.wait_finished(2)
    if second["status"] != "succeeded":
        raise DemoFailed(f"the deploy of v2 {second['status']}: {second['outcome']}")
    if stage.serving() != "v2":
        raise DemoFailed(f"after the deploy the portal answers {stage.serving()!r}, not v2")
    time.sleep(1.0)
    on_v2 = load.by_version["v2"]
    note(t, f"The portal answers v2 ({on_v2} requests so far); v1 keeps running in slot {second['blue_slot']} for a rollback.")

    chapter(t, 4, "Something is off: /rollback web")
    preview = stage.command(DANA, "/rollback", "web")
    if preview is None:
        raise DemoFailed("/rollback answered nothing")
    confirm = preview.button("Roll back")[1].get("confirm") or {}
    if confirm:
        title = confirm.get("title", {}).get("text", "")
        text = r.text(confirm.get("text", {}).get("text", ""))
        yes, no = confirm.get("confirm", {}).get("text", "OK"), confirm.get("deny", {}).get("text", "Cancel")
        note(t, f"The button asks first: “{title}” {text} [{no}] [{yes}]; dana confirms.")
    with httpx.Client(timeout=5) as probe:
        probe.get(stage.public + "/version")  # open the probe's connection before the click
        clicked = time.monotonic()
        stage.click(DANA, preview, "Roll back")
        while (answer := probe.get(stage.public + "/version").text.strip()) != "v1":
            if time.monotonic() - clicked > 10:
                raise DemoFailed(f"10 s after the click the portal still answers {answer!r}")
            time.sleep(0.002)
        back_after = time.monotonic() - clicked
    rollback = stage.wait_finished(3)
    if rollback["kind"] != "rollback" or rollback["status"] != "succeeded":
        raise DemoFailed(f"the rollback {rollback['status']}: {rollback['outcome']}")
    note(t, f"Measured at the public address: v1 answered {back_after * 1000:.0f} ms after the click.")
    time.sleep(0.5)
    load.stop()
    return load


def report(stage: Stage, load: Load) -> None:
    t = stage.transcript
    chapter(t, 5, "What the schools saw")
    card = stage.card(2)
    note(t, f"The card in #{CHANNELS[DEPLOYS]} now reads:")
    t.card(card)
    seen = load.stop()
    took = load.stopped_at - load.started_at
    t.print(f"  Requests to {stage.public}/version while v1 → v2 → v1 "
            f"({load.clients} keep-alive clients, {took:.1f} s):")
    for version in sorted(seen.by_version):
        t.print(f"    answered by {version:<10}{seen.by_version[version]:>8,}")
    reasons = collections.Counter(reason.split(":")[0] for _, reason in seen.failures)
    for reason in sorted(reasons):
        t.print(f"    failed: {reason:<12}{reasons[reason]:>8,}")
    t.print(f"    {'total':<22}{seen.total:>8,}")
    verdict = f"{seen.failed} failed"
    t.print(t.style.bold(f"  {verdict}" + (": not one request was lost." if seen.failed == 0 else ".")))


def dashboard(stage: Stage) -> None:
    """Chapter 6: the dashboard's pages and metrics, read from this run's own store."""
    import re

    from bot.listeners.home import home_view

    t = stage.transcript
    chapter(t, 6, "The dashboard: /deploy dashboard, the web pages, /metrics, App Home")
    answer = stage.command(DANA, "/deploy", "dashboard")
    found = re.search(r"<(http[^|>]+)\|", answer.text if answer else "")
    if not found:
        raise DemoFailed("/deploy dashboard answered no sign-in link")
    link = found.group(1)
    with httpx.Client(base_url=stage.url, timeout=10) as web:
        if web.get(link).status_code != 200:
            raise DemoFailed("the sign-in link did not open")
        token = link.split("token=", 1)[1]
        if web.post("/dashboard/signin", data={"token": token}).status_code != 303:
            raise DemoFailed("the sign-in link did not sign dana in")
        again = web.post("/dashboard/signin", data={"token": token}, cookies={}).status_code
        note(t, f"dana opens the link and is signed in; the same link a second time answers {again}.")

        def text(html: str) -> str:
            return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()

        overview = web.get("/dashboard").text
        live = re.search(r'data-service="web" data-env="production">(.*?)</tr>', overview, re.S)
        note(t, f"/dashboard, what is live: {text(live.group(1)) if live else '?'}")
        window = re.search(r'id="window">(.*?)</div>\s*</div>', overview, re.S)
        note(t, f"/dashboard, the window: {text(window.group(1)) if window else '?'}")
        steps = re.findall(r"<tr><td>(\w+)</td><td><span[^>]*>(\w+)</span></td>\s*<td>([^<]*)</td>",
                           web.get("/dashboard/deploys/2").text)
        note(t, "/dashboard/deploys/2: " + ", ".join(f"{name} {took}" for name, _, took in steps))
        dora = web.get("/dashboard/metrics").text
        keys = {k: text(v) for k, v in re.findall(r'class="dora-(\w+)">(.*?)</a>', dora)}
        note(t, "/dashboard/metrics (30 days): " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in keys.items()))
        metrics = web.get("/metrics").text
        shown = [line for line in metrics.splitlines() if line.startswith(("recess_deploys_total", "recess_live_info",
                                                                          "recess_window_safe", "recess_rollback_seconds_count"))]
        note(t, "GET /metrics: " + "; ".join(shown))
    view = home_view(stage.rt, DANA.id, DANA.tz)
    note(t, f"App Home for dana: {len(view['blocks'])} blocks, {len(str(view)):,} bytes (Slack allows 100 and 250 kB).")


def main() -> int:
    started = time.monotonic()
    quiet_logging()
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="replace")
    style = Style(sys.stdout)
    transcript = Transcript(Renderer({u.id: u for u in (DANA, PRIYA)}, CHANNELS, bold=style.bold, tz=DANA.tz), style)

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    from commands.config import ConfigError

    code = 1
    with tempfile.TemporaryDirectory(prefix="recess-demo-") as tmp:
        transcript.print(style.bold("recess demo: a deploy and a rollback of the school portal, offline"))
        try:
            stage = Stage(Path(tmp), transcript)
        except ConfigError as exc:
            transcript.print(f"recess demo cannot start: {exc}")
            return 2
        try:
            stage.start()
            note(transcript, f"Slack stand-in {stage.slack.api_url} · recess {stage.url}/slack/events (signed requests)")
            note(transcript, f"portal {stage.public} (HAProxy) · slots blue :{stage.slots['blue']}, "
                             f"green :{stage.slots['green']} · data in {tmp}")
            load = story(stage)
            report(stage, load)
            dashboard(stage)
            code = 0 if load.failed == 0 else 1
        except DemoFailed as exc:
            transcript.print(f"\nrecess demo FAILED: {exc}")
        except KeyboardInterrupt:
            transcript.print("\ninterrupted")
            code = 130
        finally:
            # Also on SIGTERM (SystemExit): nothing the demo started outlives it.
            stopped = stage.close()
            if stage.slack is not None and stage.slack.unanswered:
                transcript.print(f"  (the stand-in did not know: {', '.join(sorted(set(stage.slack.unanswered)))})")
            transcript.print()
            listed = ", ".join(stopped[:-1]) + f" and {stopped[-1]}" if len(stopped) > 1 else "".join(stopped)
            transcript.print(style.dim(f"Stopped {listed or 'nothing'}; removed {tmp}."))
            if _still_listening(stage.public):
                transcript.print(f"warning: something still listens on {stage.public}")
                code = code or 1
    transcript.print(f"recess demo {'finished' if code == 0 else 'failed'} in {time.monotonic() - started:.1f} s.")
    return code


def _still_listening(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


if __name__ == "__main__":
    sys.exit(main())
