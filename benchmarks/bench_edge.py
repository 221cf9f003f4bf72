"""Benchmark (issue 10): what hostile bodies cost `recess serve`, and how fast garbage is refused.

`recess serve` runs as a subprocess; its memory is read from /proc/PID/status (VmRSS sampled every
5 ms while the bodies arrive, and VmHWM, the kernel's own peak). Each round, 4 clients at once
each start sending an unsigned 100 MB body to /slack/events, chunked in one round kind and with a
declared Content-Length in the other, and keep sending until the server answers (or the 100 MB are
sent). The target: peak RSS at most 20 MB above what it was before the round.

Then garbage: bodies and headers that once answered 500 (a 0xFF body, timestamp `abc`, a
non-ASCII byte in the signature, signed payloads of the wrong types), each sent `--garbage` times
over one keep-alive connection, timed from the first byte sent to the last byte of the answer.
Every answer must be 400 or 401, and the log must hold no traceback.

`--code DIR` runs the `recess serve` of another checkout (put first on PYTHONPATH), to measure
the same rounds before a fix.

    .venv/bin/python benchmarks/bench_edge.py [--rounds 5] [--clients 4] [--mb 100] [--garbage 200] [--code DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import json
import select
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import SECRET, RecessProcess, base_config, machine, summary  # noqa: E402
from tests.kit.slack import FakeSlackProcess  # noqa: E402

TARGET_MB = 20.0
MiB = 1024 * 1024

CONFIG = base_config()


# -- memory ---------------------------------------------------------------------------------------


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class RssSampler:
    """VmRSS of `pid` every `interval` seconds until stopped; `peak` in kB."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid, self.interval = pid, interval
        self.peak = status_kb(pid, "VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_kb(self.pid, "VmRSS"))
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_kb(self.pid, "VmRSS"))
        return self.peak


# -- one hostile client ---------------------------------------------------------------------------


def send_big_body(port: int, total: int, *, chunked: bool, chunk: int = 256 * 1024) -> tuple[int | str, int, float]:
    """Sends an unsigned body of up to `total` bytes without ever blocking on a send, stopping when
    the server answers. Returns (status or "reset", bytes of body sent, seconds until the answer)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}"
    head = (f"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Slack-Request-Timestamp: {int(time.time())}\r\nX-Slack-Signature: v0={'0' * 64}\r\n{framing}\r\n\r\n")
    out = bytearray(head.encode())
    block, sent, answer = b"x" * chunk, 0, b""
    started = time.perf_counter()
    answered_at = None
    try:
        while True:
            readable, writable, _ = select.select([sock], [sock] if (out or sent < total) else [], [], 120)
            if readable:
                data = sock.recv(65536)
                answered_at = answered_at or time.perf_counter()
                if not data or b"\r\n\r\n" in answer + data:
                    answer += data
                    break
                answer += data
                continue
            if not writable:
                break
            if not out:
                out += (f"{chunk:x}\r\n".encode() + block + b"\r\n") if chunked else block
                sent += chunk
                if chunked and sent >= total:
                    out += b"0\r\n\r\n"
            out = out[sock.send(out):]
    except (BrokenPipeError, ConnectionResetError):
        # The server closed with part of the body unread, so its kernel answered with a reset,
        # which can arrive before the 413 is read here: refused all the same.
        answered_at = answered_at or time.perf_counter()
    finally:
        sock.close()
    status: int | str = int(answer.split(b" ")[1]) if answer.startswith(b"HTTP/1.1 ") else "reset"
    return status, min(sent, total), (answered_at or time.perf_counter()) - started


def flood_round(bot: RecessProcess, clients: int, total: int, *, chunked: bool) -> dict:
    pid = bot.proc.pid
    rss_before = status_kb(pid, "VmRSS")
    hwm_before = status_kb(pid, "VmHWM")
    sampler = RssSampler(pid)
    results: list[tuple[int | str, int, float]] = [("none", 0, 0.0)] * clients
    gate = threading.Barrier(clients)

    def one(i: int) -> None:
        gate.wait()
        results[i] = send_big_body(bot.port, total, chunked=chunked)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.2)  # let the sampler see any memory still held just after the answers
    peak = sampler.stop()
    hwm_after = status_kb(pid, "VmHWM")
    return {
        "rss_before_mb": rss_before / 1024,
        "peak_rss_mb": peak / 1024,
        "increase_mb": (peak - rss_before) / 1024,
        "hwm_increase_mb": max(0, hwm_after - max(hwm_before, rss_before)) / 1024,
        "statuses": [r[0] for r in results],
        "sent_mb": [r[1] / MiB for r in results],
        "answer_s": [r[2] for r in results],
    }


# -- garbage --------------------------------------------------------------------------------------


def signed(body: bytes, content_type: str = "application/json") -> dict[str, str]:
    ts = str(int(time.time()))
    digest = hmac.new(SECRET.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": ts, "X-Slack-Signature": "v0=" + digest}


def garbage_cases() -> dict[str, object]:
    now = lambda: str(int(time.time()))  # noqa: E731
    bogus = "v0=" + "0" * 64
    click = {"type": "block_actions", "team": {"id": "T1"}, "user": {"id": "U0APPROVER1"}, "actions": "deploy_approve"}
    event = {"type": "event_callback", "team_id": "T1", "event_id": ["Ev1"], "event": {"type": "app_home_opened"}}
    click_body = urllib.parse.urlencode({"payload": json.dumps(click)}).encode()
    event_body = json.dumps(event).encode()
    return {
        "0xFF body, unsigned": lambda: (b"\xff", {"X-Slack-Request-Timestamp": now(), "X-Slack-Signature": bogus}),
        "0xFF body, signed": lambda: (b"\xff", signed(b"\xff")),
        "timestamp abc": lambda: (b"a=b", {"X-Slack-Request-Timestamp": "abc", "X-Slack-Signature": bogus}),
        "non-ASCII signature": lambda: (b"a=b", {"X-Slack-Request-Timestamp": now(), "X-Slack-Signature": "v0=\xe9" + "0" * 63}),
        "signed, actions a string": lambda: (click_body, signed(click_body, "application/x-www-form-urlencoded")),
        "signed, event_id a list": lambda: (event_body, signed(event_body)),
    }


def time_garbage(port: int, n: int) -> dict[str, dict]:
    out = {}
    for name, make in garbage_cases().items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        latencies, statuses = [], {}
        for _ in range(n):
            body, headers = make()
            started = time.perf_counter()
            try:
                conn.request("POST", "/slack/events", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
        conn.close()
        out[name] = {"latency": summary(latencies), "statuses": statuses}
    return out


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each kind (chunked, declared length)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--mb", type=int, default=100, help="size of each client's body, in MiB")
    ap.add_argument("--garbage", type=int, default=200, help="requests of each garbage kind")
    ap.add_argument("--code", help="run the recess serve of this checkout instead (to measure before a fix)")
    args = ap.parse_args()

    print(machine())
    print(f"{args.clients} clients x {args.mb} MiB unsigned bodies, {args.rounds} rounds each of chunked and declared Content-Length")
    extra_env = {"PYTHONPATH": str(Path(args.code).resolve())} if args.code else None
    failed = False
    with tempfile.TemporaryDirectory() as tmp, FakeSlackProcess() as slack:
        config = Path(tmp) / "recess.toml"
        config.write_text(CONFIG)
        bot = RecessProcess(config, slack, Path(tmp) / "recess.log", extra_env=extra_env)
        try:
            ready = bot.wait_ready()
            print(f"recess serve ready in {ready:.2f} s; RSS {status_kb(bot.proc.pid, 'VmRSS') / 1024:.1f} MB, "
                  f"VmHWM {status_kb(bot.proc.pid, 'VmHWM') / 1024:.1f} MB")
            # Warm up the paths a refusal takes (imports, the thread pool) before measuring.
            send_big_body(bot.port, 2 * MiB, chunked=True)
            send_big_body(bot.port, 2 * MiB, chunked=False)
            increases: dict[str, list[float]] = {"chunked": [], "declared": []}
            for r in range(args.rounds):
                for kind in ("chunked", "declared"):
                    res = flood_round(bot, args.clients, args.mb * MiB, chunked=kind == "chunked")
                    increases[kind].append(res["increase_mb"])
                    print(f"  round {r + 1} {kind:8s}: RSS {res['rss_before_mb']:.1f} -> peak {res['peak_rss_mb']:.1f} MB "
                          f"(+{res['increase_mb']:.1f}; VmHWM +{res['hwm_increase_mb']:.1f}); statuses {res['statuses']}; "
                          f"sent {', '.join(f'{s:.1f}' for s in res['sent_mb'])} MiB; answered after "
                          f"{', '.join(f'{s * 1000:.0f}' for s in res['answer_s'])} ms")
                    # Refused means 413 (or a reset in its place) before the whole body was sent.
                    if any(s not in (413, "reset") for s in res["statuses"]) or max(res["sent_mb"]) >= args.mb:
                        failed = True
            print()
            for kind, values in increases.items():
                worst = max(values)
                verdict = "PASS" if worst < TARGET_MB else "FAIL"
                failed |= worst >= TARGET_MB
                print(f"{kind:8s} peak RSS increase: median {statistics.median(values):.1f} MB "
                      f"(min {min(values):.1f}, max {worst:.1f}, n {len(values)}); target < {TARGET_MB:.0f} MB: {verdict}")
            print()
            print(f"garbage, {args.garbage} requests of each kind over one keep-alive connection:")
            for name, res in time_garbage(bot.port, args.garbage).items():
                lat = res["latency"]
                ok = all(isinstance(s, int) and s in (400, 401) for s in res["statuses"])
                failed |= not ok
                print(f"  {name:26s} {res['statuses']}  p50 {lat['p50'] * 1000:.2f} ms, p90 {lat['p90'] * 1000:.2f} ms, "
                      f"p99 {lat['p99'] * 1000:.2f} ms, max {lat['max'] * 1000:.2f} ms  {'ok' if ok else 'FAIL: not 400/401'}")
        finally:
            bot.stop()
        log = bot.log()
        tracebacks = log.count("Traceback")
        failed |= tracebacks > 0
        print(f"tracebacks in the bot's log: {tracebacks}; refusal lines: {log.count('refused POST /slack/events')}")
    print("RESULT:", "FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
