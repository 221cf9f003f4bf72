"""The CI side of the REST API: `recess deploy`, `recess rollback` and `recess window check --server`.

A thin httpx client. Exit codes are a contract (docs/ci.md): 0 live, 1 failed or rolled back
(or refused), 2 usage or auth errors, 3 timed out still waiting (the deploy keeps its place).
Transient failures (connection errors, timeouts, 429, 5xx) are retried with backoff; a retried
request carries the same Idempotency-Key, so it never makes a second deploy.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, TextIO

import httpx

from commands.config import format_duration, parse_duration

LIVE, FAILED, USAGE, TIMED_OUT = 0, 1, 2, 3
ENDED_BADLY = ("failed", "rolled_back", "cancelled", "rejected", "needs_attention")
TRANSIENT_STATUS = (429, 500, 502, 503, 504)


class Usage(Exception):
    """Exit 2: the command line, the server address or the token is wrong."""


class Refused(Exception):
    """Exit 1: recess answered, and said no (409 and the like)."""


class Client:
    def __init__(self, server: str, token: str, *, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic, retry_for: float = 120.0,
                 err: TextIO = sys.stderr) -> None:
        if not server.startswith(("http://", "https://")):
            raise Usage(f"the server must be an http:// or https:// URL, got {server!r} (--server, or RECESS_URL)")
        self.http = httpx.Client(base_url=server.rstrip("/"), timeout=httpx.Timeout(15.0, connect=5.0),
                                 headers={"Authorization": f"Bearer {token}", "User-Agent": "recess-cli"})
        self.sleep, self.monotonic, self.retry_for, self.err = sleep, monotonic, retry_for, err

    def call(self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None,
             params: dict[str, str] | None = None) -> tuple[int, Any]:
        """One request, retried while the failure is transient (for at most `retry_for` seconds)."""
        give_up = self.monotonic() + self.retry_for
        delay = 0.5
        while True:
            try:
                resp = self.http.request(method, path, json=json, headers=headers, params=params)
                if resp.status_code not in TRANSIENT_STATUS:
                    return resp.status_code, _json(resp)
                why = f"HTTP {resp.status_code}"
                wait = _retry_after(resp) or delay
            except httpx.TransportError as exc:
                why, wait = f"{type(exc).__name__}: {exc}", delay
            if self.monotonic() + wait > give_up:
                raise Refused(f"recess did not answer {method} {path} ({why}); gave up after "
                              f"{format_duration(dt.timedelta(seconds=self.retry_for))}")
            print(f"recess: {why}; trying again in {wait:.1f} s", file=self.err)
            self.sleep(wait)
            delay = min(delay * 2, 15.0)


def _json(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return {"error": resp.text[:200] or f"HTTP {resp.status_code}"}


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return min(float(resp.headers.get("retry-after", "")), 60.0)
    except ValueError:
        return None


def check(status: int, body: Any, ok: tuple[int, ...]) -> Any:
    if status in ok:
        return body
    message = body.get("error") if isinstance(body, dict) else str(body)
    if status in (400, 401, 403, 404, 405, 413):
        raise Usage(f"{message} (HTTP {status})")
    raise Refused(f"{message} (HTTP {status})")


def token_from(var: str) -> str:
    token = os.environ.get(var, "").strip()
    if not token:
        raise Usage(f"no API token: set {var} (or name another variable with --token-env)")
    return token


def server_from(arg: str | None) -> str:
    server = arg or os.environ.get("RECESS_URL")
    if not server:
        raise Usage("no server: pass --server URL or set RECESS_URL")
    return server


def default_key(*parts: str) -> str:
    """The Idempotency-Key of this request: stable across re-runs of the same CI step (GitHub's
    run ID and attempt), else random for this invocation (its own retries still share it)."""
    run = os.environ.get("GITHUB_RUN_ID")
    if run:
        return "-".join(["gh", run, os.environ.get("GITHUB_RUN_ATTEMPT", "1"), *parts])[:200]
    return f"cli-{uuid.uuid4()}"


# -- following a deploy -----------------------------------------------------------------------------


def describe(d: dict[str, Any]) -> str:
    status = d["status"].replace("_", " ")
    if d["status"] == "queued" and d.get("queued_until"):
        status += f" until {d['queued_until']}"
    if d["status"] == "pending":
        status += f" ({len(d['approvals'])} of {d['approvals_needed']} approvals; approve it in Slack)"
    if d.get("outcome"):
        status += f": {d['outcome']}"
    what = "release" if d.get("release") else "deploy"
    return f"{what} #{d['id']} {d['service']} {d['version']} ({d['env']}): {status}"


def follow(client: Client, d: dict[str, Any], *, timeout: float, interval: float, out: TextIO) -> int:
    """Prints one line per status change and per step as it moves; returns the exit code."""
    seen_steps: dict[int, str] = {}
    last_status = None
    deadline = client.monotonic() + timeout
    while True:
        if d["status"] != last_status:
            print(describe(d), file=out, flush=True)
            last_status = d["status"]
        for i, step in enumerate(d["steps"]):
            if seen_steps.get(i) != step["status"]:
                seen_steps[i] = step["status"]
                detail = step["detail"].splitlines()[0][:160] if step.get("detail") else ""
                if detail.startswith(f"{step['status']}:"):
                    detail = detail[len(step["status"]) + 1:].strip()
                print(f"  {step['name']}: {step['status']}" + (f": {detail}" if detail else ""), file=out, flush=True)
        if d["status"] == "succeeded":
            for m in d.get("members") or []:
                print(f"  {m['service']}: {m['previous_version'] or 'nothing'} -> {m['version']} ({m['status']})",
                      file=out, flush=True)
            print(f"{d['service']} {d['version']} is live in {d['env']}"
                  + (f" ({d['card_url']})" if d.get("card_url") else ""), file=out, flush=True)
            return LIVE
        if d["status"] in ENDED_BADLY:
            return FAILED
        if client.monotonic() >= deadline:
            where = {"pending": "still waits for approval", "approved": "waits in the queue",
                     "queued": "is queued for the next safe window", "running": "is still running"}[d["status"]]
            print(f"recess: timed out after {format_duration(dt.timedelta(seconds=timeout))}: deploy #{d['id']} "
                  f"{where}; it keeps its place (see {d.get('card_url') or 'its card in Slack'})", file=out, flush=True)
            return TIMED_OUT
        client.sleep(min(interval, max(deadline - client.monotonic(), 0.0)))
        d = check(*client.call("GET", f"/api/v1/deploys/{d['id']}"), ok=(200,))


def duration(text: str, flag: str) -> float:
    try:
        seconds = parse_duration(text).total_seconds()
    except (ValueError, TypeError) as exc:
        raise Usage(f"{flag}: {exc}") from None
    if seconds <= 0:
        raise Usage(f"{flag}: expected a duration above 0, like 45m")
    return seconds


def run(fn: Callable[[], int], err: TextIO = sys.stderr) -> int:
    try:
        return fn()
    except Usage as exc:
        print(f"recess: {exc}", file=err)
        return USAGE
    except Refused as exc:
        print(f"recess: {exc}", file=err)
        return FAILED


def deploy(args: Any, out: TextIO = sys.stdout) -> int:
    def go() -> int:
        client = Client(server_from(args.server), token_from(args.token_env))
        timeout = duration(args.timeout, "--timeout")
        words = args.version if isinstance(args.version, list) else [args.version]
        pairs = [w for w in words if "=" in w]
        if pairs:  # SERVICE=VERSION...: the named members of a release
            if len(pairs) != len(words):
                raise Usage("give one VERSION, or SERVICE=VERSION for each member of the release, not both")
            versions = dict(w.partition("=")[::2] for w in words)
            if len(versions) != len(words):
                raise Usage("name each member of the release once")
            body: dict[str, Any] = {"release": args.service, "versions": versions}
        elif len(words) == 1:
            body = {"service": args.service, "version": words[0]}
        else:
            raise Usage(f"too many words: {' '.join(words[1:])} (give the ENV with --env)")
        for field in ("env", "sha", "committed_at", "requested_by", "reason"):
            value = getattr(args, field)
            if value:
                body[field] = value
        key = args.idempotency_key or default_key(args.service, *words, args.env or "")
        status, answer = client.call("POST", "/api/v1/deploys", json=body, headers={"Idempotency-Key": key})
        if status == 400 and isinstance(answer, dict) and answer.get("release") == args.service and "service" in body:
            # The name is a release's: the same request, for the release (the refusal stored nothing).
            body = {"release": body.pop("service"), **body}
            status, answer = client.call("POST", "/api/v1/deploys", json=body, headers={"Idempotency-Key": key})
        d = check(status, answer, ok=(200, 202))
        if not args.wait:
            print(describe(d), file=out)
            return LIVE
        return follow(client, d, timeout=timeout, interval=args.interval, out=out)

    return run(go)


def rollback(args: Any, out: TextIO = sys.stdout) -> int:
    def go() -> int:
        client = Client(server_from(args.server), token_from(args.token_env))
        timeout = duration(args.timeout, "--timeout")
        body = {k: v for k, v in (("env", args.env), ("reason", args.reason), ("requested_by", args.requested_by)) if v}
        status, answer = client.call("POST", f"/api/v1/services/{args.service}/rollback", json=body)
        if status == 400 and isinstance(answer, dict) and answer.get("release") == args.service:
            status, answer = client.call("POST", f"/api/v1/releases/{args.service}/rollback", json=body)
        d = check(status, answer, ok=(202,))
        if not args.wait:
            print(describe(d), file=out)
            return LIVE
        return follow(client, d, timeout=timeout, interval=args.interval, out=out)

    return run(go)


def window_check(args: Any, out: TextIO = sys.stdout) -> int:
    """`recess window check --server URL`: the verdict of the running recess (it knows the
    freezes added in Slack). `--for 45m` also refuses when the safe stretch ends sooner."""

    def go() -> int:
        client = Client(server_from(args.server), os.environ.get(args.token_env, ""))
        params = {"at": args.at} if args.at else None
        verdict = check(*client.call("GET", "/api/v1/window", params=params), ok=(200,))
        return print_verdict(verdict, args, out)

    return run(go)


def print_verdict(verdict: dict[str, Any], args: Any, out: TextIO) -> int:
    import json

    need = duration(args.needs, "--for") if getattr(args, "needs", None) else None
    at = dt.datetime.fromisoformat(verdict["at"])
    until = dt.datetime.fromisoformat(verdict["safe_until"]) if verdict.get("safe_until") else None
    short = bool(verdict["safe"] and need is not None and until is not None and until - at < dt.timedelta(seconds=need))
    if args.format == "json":
        print(json.dumps(verdict), file=out)
    elif verdict["safe"]:
        line = f"safe at {verdict['at']}"
        if until is not None:
            line += f", until {verdict['safe_until']}" + (f" ({verdict['until_reason']})" if verdict.get("until_reason") else "")
        print(line, file=out)
        if short:
            print(f"refused: the window closes in {format_duration(until - at)}, less than the "
                  f"{format_duration(dt.timedelta(seconds=need))} asked for with --for", file=out)
    else:
        print(f"blocked at {verdict['at']}: {verdict['reason']}", file=out)
        print(f"next safe window: {verdict['next_safe_at'] or 'none within 400 days'}", file=out)
    return 0 if verdict["safe"] and not short else 1
