"""The `recess` command: serve the bot, ask the window API offline, lint migrations, check config."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence

from commands.config import Config, ConfigError, format_duration, load_config


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config or os.environ.get("RECESS_CONFIG") or "recess.toml")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from bot.app import build_app
    from bot.lease import DatabaseLease, LeaseError, LeaseHeld
    from bot.runtime import build_runtime
    from bot.server import build_http_app
    from bot.startup import preflight

    cfg = _config(args)
    warnings = preflight(cfg)
    logging.basicConfig(level=os.environ.get("RECESS_LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe is noise
    # APScheduler logs every job run ("Running job ...") at INFO: 135 of 153 lines once. Warnings stay.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    for warning in warnings:
        logging.getLogger("recess").warning("%s", warning)
    app_token = os.environ.get("SLACK_APP_TOKEN")
    if not app_token and not os.environ.get("SLACK_SIGNING_SECRET"):
        print("recess: SLACK_SIGNING_SECRET is not set; it is needed to verify requests from Slack (or set SLACK_APP_TOKEN for Socket Mode)", file=sys.stderr)
        return 2
    # One owner per database: nothing below (recovery, the scheduler, the outbox) runs before
    # this process holds the lease. It is never released here: the kernel frees it when the
    # process ends, after the last pipeline thread, so a standby cannot start beside one.
    lease = None
    if DatabaseLease.needed(cfg.bot.database):
        lease = DatabaseLease(cfg.database_path)
        try:
            lease.acquire(wait=args.standby)
        except LeaseHeld as exc:
            print(f"recess: {exc}; stop it first, or start this one with --standby to take over when it stops", file=sys.stderr)
            return 2
        except LeaseError as exc:
            print(f"recess: {exc}", file=sys.stderr)
            return 2
    rt = build_runtime(cfg)
    rt.extras["lease"] = lease
    rt.extras["serve_url"] = f"http://{args.host}:{args.port}"  # sign-in links, unless [bot] public_url
    rt.start()
    bolt = build_app(rt, socket_mode=bool(app_token))
    if app_token:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        SocketModeHandler(bolt, app_token).connect()
        http = build_http_app(rt, None)
        mode = "Socket Mode for Slack; HTTP for health, the window API and OFREP"
    else:
        http = build_http_app(rt, bolt)
        mode = "HTTP, Slack at POST /slack/events"
    logging.getLogger("recess").info("listening on %s:%d (%s)", args.host, args.port, mode)
    try:
        uvicorn.run(http, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=30)
    finally:
        rt.stop()
    return 0


def cmd_window_check(args: argparse.Namespace) -> int:
    from bot import ci
    from commands.freezes import check_instant, current_calendar
    from storage.db import Store

    if args.server or (os.environ.get("RECESS_URL") and not (args.config or os.environ.get("RECESS_CONFIG"))):
        return ci.window_check(args)  # ask the running recess, which knows the freezes added in Slack
    cfg = _config(args)
    if args.at:
        try:
            at = dt.datetime.fromisoformat(args.at)
        except ValueError:
            print(f"recess window check: --at: expected an ISO 8601 instant with offset, got {args.at!r}", file=sys.stderr)
            return 2
        if at.tzinfo is None:
            print(f"recess window check: --at: expected an offset (like -04:00 or Z) in {args.at!r}", file=sys.stderr)
            return 2
        try:
            at = check_instant(at)
        except (ValueError, OverflowError) as exc:
            print(f"recess window check: --at: {exc}", file=sys.stderr)
            return 2
    else:
        at = dt.datetime.now(dt.UTC)
    try:
        needs = ci.duration(args.needs, "--for") if args.needs else None
    except ci.Usage as exc:
        print(f"recess window check: {exc}", file=sys.stderr)
        return 2
    verdict = current_calendar(cfg, Store(cfg.database_path)).verdict(at.astimezone(dt.UTC))
    phrase = verdict.until_phrase()
    short = bool(verdict.safe and needs and verdict.ends and (verdict.ends.at - verdict.at).total_seconds() < needs)
    if args.format == "json":
        print(json.dumps(verdict.to_json()))
    elif verdict.safe:
        print(f"safe at {verdict.at.isoformat(timespec='seconds')}" + (f", {phrase}" if phrase else ""))
        if short:
            print(f"refused: the window closes in {format_duration(verdict.ends.at - verdict.at)}, "
                  f"less than the {args.needs} asked for with --for")
    else:
        print(f"blocked at {verdict.at.isoformat(timespec='seconds')}: {verdict.reason}")
        nxt = verdict.next_safe_at.isoformat(timespec="seconds") if verdict.next_safe_at else "none within 400 days"
        print(f"next safe window: {nxt}" + (f" ({phrase})" if phrase else ""))
    return 0 if verdict.safe and not short else 1


def cmd_config_check(args: argparse.Namespace) -> int:
    from bot.startup import preflight

    cfg = _config(args)
    for warning in preflight(cfg):  # the same checks `recess serve` makes before it touches Slack
        print(f"warning: {warning}", file=sys.stderr)
    releases = f", {len(cfg.releases)} releases" if cfg.releases else ""
    print(f"{cfg.source}: ok ({len(cfg.tenants)} tenants, {len(cfg.services)} services{releases}, "
          f"environments: {', '.join(cfg.environments)})")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Takes a `local` or `docker` service down on purpose: drains and stops both slots and stops
    its router (which the router watchdog then leaves alone). Refused while a deploy of it is
    open (pending, approved, queued, running or needing attention)."""
    from platforms import SLOTS, PlatformError, make_platform
    from storage import audit
    from storage.db import Store
    from storage.deploys import ACTIVE

    cfg = _config(args)
    spec = cfg.services.get(args.service)
    if spec is None:
        print(f"recess down: unknown service {args.service!r} (known: {', '.join(sorted(cfg.services)) or 'none'})",
              file=sys.stderr)
        return 2
    if spec.platform not in ("local", "docker"):
        print(f"recess down: {args.service} runs on the {spec.platform!r} platform; recess only takes down services "
              f"whose slots and router it runs itself (local, docker)", file=sys.stderr)
        return 2
    env = args.env or cfg.service_environments(args.service)[0]
    if env not in cfg.service_environments(args.service):
        print(f"recess down: {args.service} is not deployed to {env!r}", file=sys.stderr)
        return 2
    store = Store(cfg.database_path)
    marks = ",".join("?" * len(ACTIVE))
    busy = store.rows(f"SELECT id, status, version FROM deploys WHERE service = ? AND env = ? AND status IN ({marks})"
                      f" ORDER BY id", (args.service, env, *ACTIVE))
    if busy:
        listed = ", ".join(f"#{d['id']} ({d['version']}, {d['status'].replace('_', ' ')})" for d in busy)
        print(f"recess down: refused: {args.service} in {env} has open deploys: {listed}. Let them end, or cancel them, "
              f"first", file=sys.stderr)
        return 1
    if not args.yes and not sys.stdin.isatty():
        print("recess down: not a terminal to ask on: add --yes to take the service down", file=sys.stderr)
        return 2
    platform = make_platform(cfg, args.service, env)
    try:
        before = platform.status()
    except PlatformError as exc:
        print(f"recess down: cannot read {args.service} in {env}: {exc}", file=sys.stderr)
        return 1
    running = {s: before.slot(s).version for s in SLOTS if before.slot(s).running}
    listen = getattr(getattr(spec, spec.platform), "listen", "its public address")
    if not args.yes:
        what = ", ".join(f"{s} ({v})" for s, v in running.items()) or "no slot runs"
        answer = input(f"Take {args.service} down in {env}? {what}; {listen} stops answering. Type the service's "
                       f"name to confirm: ")
        if answer.strip() != args.service:
            print("recess down: not confirmed; nothing was changed", file=sys.stderr)
            return 1
    router = platform.router  # type: ignore[attr-defined]  (both platforms run an HAProxyRouter)
    stopped = []
    try:
        # The slot without traffic first; then the router, so the last slot holds no session when it stops.
        for slot in sorted(running, key=lambda s: before.slot(s).weight):
            if slot == before.serving:
                router.stop()
            platform.drain(slot, timeout=args.drain_timeout)
            platform.stop(slot)
            stopped.append(slot)
        router.stop()
    except PlatformError as exc:
        print(f"recess down: {exc} {exc.output}".strip(), file=sys.stderr)
        return 1
    actor = f"cli:{os.environ.get('USER') or os.environ.get('LOGNAME') or 'unknown'}"
    audit.record(store, actor=actor, command="recess down", action="service.down", target=f"service:{args.service}/{env}",
                 before={"weights": before.weights, "running": running}, after={"stopped": stopped, "router": "stopped"})
    done = ", ".join(f"{s} ({running[s]})" for s in stopped) or "no slot was running"
    print(f"{args.service} in {env} is down: stopped {done} and its router on {listen}.")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from bot import ci

    return ci.deploy(args)


def cmd_rollback(args: argparse.Namespace) -> int:
    from bot import ci

    return ci.rollback(args)


def cmd_api_token(args: argparse.Namespace) -> int:
    """Prints a new random token and the `[[api.tokens]]` entry to paste (its SHA-256 only)."""
    import hashlib
    import secrets

    from commands.config import API_SCOPES, TOKEN_NAME

    if not TOKEN_NAME.fullmatch(args.name):
        print(f"recess api token: NAME: expected a-z, 0-9, '.', '_' or '-' (like github-actions), got {args.name!r}",
              file=sys.stderr)
        return 2
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    wrong = [s for s in scopes if s not in API_SCOPES]
    if wrong or not scopes or len(set(scopes)) != len(scopes):
        print(f"recess api token: --scopes: expected a comma-separated subset of {', '.join(API_SCOPES)}, "
              f"got {args.scopes!r}", file=sys.stderr)
        return 2
    token = "recess_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    print(f"token (shown once; store it as a CI secret, e.g. RECESS_TOKEN): {token}")
    print("paste into recess.toml:")
    print()
    print("[[api.tokens]]")
    print(f'name = "{args.name}"')
    print(f'token_sha256 = "{digest}"')
    print(f"scopes = [{', '.join(json.dumps(s) for s in scopes)}]")
    return 0


def _client_args(p: argparse.ArgumentParser, *, wait: bool = True) -> None:
    p.add_argument("--server", help="recess's URL (default: $RECESS_URL)")
    p.add_argument("--token-env", default="RECESS_TOKEN", metavar="VAR",
                   help="the environment variable holding the API token (default: RECESS_TOKEN)")
    if wait:
        p.add_argument("--wait", action="store_true", help="follow the deploy and exit 0 live, 1 failed, 3 timed out")
        p.add_argument("--timeout", default="45m", help="how long --wait waits (default 45m)")
        p.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)


def cmd_migrations_lint(argv: Sequence[str]) -> int:
    from commands.migrations import lint_cli

    return lint_cli(argv, sys.stdout, sys.stderr)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recess", description="Slack chat-ops for deploys that wait for the school bell.")
    p.add_argument("--config", help="configuration file (default: $RECESS_CONFIG or recess.toml)")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the bot (HTTP, or Socket Mode when SLACK_APP_TOKEN is set)")
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    serve.add_argument("--host", default=os.environ.get("RECESS_HOST", "0.0.0.0"))
    serve.add_argument("--standby", action="store_true",
                       help="when another recess serve owns the database, wait and take over when it stops (instead of exiting 2)")
    serve.set_defaults(run=cmd_serve)

    window = sub.add_parser("window", help="deploy windows")
    wsub = window.add_subparsers(dest="window_command", required=True)
    check = wsub.add_parser("check", help="exit 0 when deploying is safe, 1 when blocked")
    check.add_argument("--at", help="ISO 8601 instant with offset (default: now)")
    check.add_argument("--format", choices=("text", "json"), default="text")
    check.add_argument("--for", dest="needs", metavar="DURATION",
                       help="also exit 1 when the safe window closes sooner than this (like 45m)")
    _client_args(check, wait=False)
    check.set_defaults(run=cmd_window_check)

    dep = sub.add_parser("deploy", help="request a deploy through the REST API (for CI); --wait follows it")
    dep.add_argument("service", help="a service, or a release of [releases]")
    dep.add_argument("version", nargs="+", help="VERSION; for a release, VERSION for every member or SERVICE=VERSION...")
    dep.add_argument("--env", help="environment (default: the service's first)")
    dep.add_argument("--sha", default=os.environ.get("GITHUB_SHA"), help="git commit (default: $GITHUB_SHA)")
    dep.add_argument("--committed-at", help="the commit's time, ISO 8601 with offset (git log -1 --format=%%cI)")
    dep.add_argument("--requested-by", default=os.environ.get("GITHUB_ACTOR"),
                     help="who the job acts for (default: $GITHUB_ACTOR)")
    dep.add_argument("--reason", help="said in the deploy's thread")
    dep.add_argument("--idempotency-key", help="default: from $GITHUB_RUN_ID and attempt, else random")
    _client_args(dep)
    dep.set_defaults(run=cmd_deploy)

    rb = sub.add_parser("rollback", help="roll a service (or a release) back through the REST API (for CI); --wait follows it")
    rb.add_argument("service", help="a service, or a release of [releases]")
    rb.add_argument("--env", help="environment (default: the service's first)")
    rb.add_argument("--reason", help="recorded in the audit log")
    rb.add_argument("--requested-by", default=os.environ.get("GITHUB_ACTOR"),
                    help="who the job acts for (default: $GITHUB_ACTOR)")
    _client_args(rb)
    rb.set_defaults(run=cmd_rollback)

    api = sub.add_parser("api", help="the REST API")
    asub = api.add_subparsers(dest="api_command", required=True)
    tok = asub.add_parser("token", help="print a new token and the [[api.tokens]] entry to paste")
    tok.add_argument("name", help="shown as the requester, like github-actions")
    tok.add_argument("--scopes", default="deploy,rollback,read", help="comma-separated (default: deploy,rollback,read)")
    tok.set_defaults(run=cmd_api_token)

    config = sub.add_parser("config", help="configuration")
    csub = config.add_subparsers(dest="config_command", required=True)
    csub.add_parser("check", help="validate the configuration and exit").set_defaults(run=cmd_config_check)

    down = sub.add_parser("down", help="take a local or docker service down on purpose: both slots and its router")
    down.add_argument("service")
    down.add_argument("env", nargs="?", help="environment (default: the service's first)")
    down.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    down.add_argument("--drain-timeout", type=float, default=30.0,
                      help="seconds to wait for a slot's sessions to end before it stops (default 30)")
    down.set_defaults(run=cmd_down)

    mig = sub.add_parser("migrations", help="migration safety")
    msub = mig.add_subparsers(dest="migrations_command", required=True)
    msub.add_parser("lint", help="lint SQL migrations", add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `recess migrations lint ...` has its own contract and parser.
    rest = argv
    while rest and rest[0] == "--config":
        rest = rest[2:]
    if rest[:2] == ["migrations", "lint"]:
        return cmd_migrations_lint(rest[2:])
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
