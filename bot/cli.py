"""The `recess` command: serve the bot, ask the window API offline, lint migrations, check config."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Sequence

from commands.config import Config, ConfigError, load_config


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
    from commands.freezes import check_instant, current_calendar
    from storage.db import Store

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
    verdict = current_calendar(cfg, Store(cfg.database_path)).verdict(at.astimezone(dt.UTC))
    if args.format == "json":
        print(json.dumps(verdict.to_json()))
    elif verdict.safe:
        print(f"safe at {verdict.at.isoformat(timespec='seconds')}")
    else:
        print(f"blocked at {verdict.at.isoformat(timespec='seconds')}: {verdict.reason}")
        nxt = verdict.next_safe_at.isoformat(timespec="seconds") if verdict.next_safe_at else "none within 400 days"
        print(f"next safe window: {nxt}")
    return 0 if verdict.safe else 1


def cmd_config_check(args: argparse.Namespace) -> int:
    from bot.startup import preflight

    cfg = _config(args)
    for warning in preflight(cfg):  # the same checks `recess serve` makes before it touches Slack
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{cfg.source}: ok ({len(cfg.tenants)} tenants, {len(cfg.services)} services, environments: {', '.join(cfg.environments)})")
    return 0


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
    check.set_defaults(run=cmd_window_check)

    config = sub.add_parser("config", help="configuration")
    csub = config.add_subparsers(dest="config_command", required=True)
    csub.add_parser("check", help="validate the configuration and exit").set_defaults(run=cmd_config_check)

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
