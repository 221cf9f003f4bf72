"""Runs one job of a GitHub Actions workflow file here, step by step, the way a runner does: each
`run:` script under `bash -eo pipefail` with the workflow's, job's and step's `env`, `$GITHUB_OUTPUT`
read back into `steps.<id>.outputs`, `$GITHUB_PATH` onto later steps' PATH, and `if:` conditions with `success()`, `failure()`,
`always()` and `steps.<id>.outcome`. A `uses:` step (or any step the caller names) runs the stand-in
the caller gives for it, since marketplace actions and registries are not reachable from here.

It understands what the example workflow uses, no more: `${{ name.path }}` expressions looked up
in a context dictionary (missing names are empty strings, as on GitHub).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


@dataclass
class StepResult:
    name: str
    id: str | None
    outcome: str  # success | failure | skipped
    output: str = ""


@dataclass
class JobRun:
    steps: list[StepResult] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        return "failure" if any(s.outcome == "failure" for s in self.steps) else "success"

    def step(self, name_or_id: str) -> StepResult:
        return next(s for s in self.steps if name_or_id in (s.id, s.name))


def evaluate(expr: str, context: Mapping[str, str], steps: Mapping[str, dict[str, Any]]) -> str:
    def lookup(name: str) -> str:
        m = re.fullmatch(r"steps\.([\w-]+)\.(outcome|outputs\.([\w-]+))", name)
        if m:
            st = steps.get(m.group(1), {})
            return st.get("outcome", "") if m.group(2) == "outcome" else st.get("outputs", {}).get(m.group(3), "")
        return context.get(name, "")

    return EXPR.sub(lambda m: lookup(m.group(1)), expr)


def condition(expr: str, failed: bool, steps: Mapping[str, dict[str, Any]]) -> bool:
    text = EXPR.sub(lambda m: m.group(1), expr)
    text = re.sub(r"steps\.([\w-]+)\.outcome", lambda m: repr(steps.get(m.group(1), {}).get("outcome", "")), text)
    text = (text.replace("failure()", str(failed)).replace("success()", str(not failed)).replace("always()", "True")
            .replace("&&", " and ").replace("||", " or "))
    text = re.sub(r"!(?!=)", " not ", text)
    return bool(eval(text, {"__builtins__": {}}, {}))  # noqa: S307 (a test's own workflow file)


def run_job(path: Path, job: str, *, context: Mapping[str, str], base_env: Mapping[str, str], cwd: Path,
            stand_ins: Mapping[str, Callable[[dict[str, str]], int] | None],
            before_step: Callable[[dict[str, Any]], None] | None = None, timeout: float = 180) -> JobRun:
    """`stand_ins` maps a step's `uses` (without @version) or name to a callable given the step's
    environment (returning an exit code), or None to pass it over as done by the machine itself."""
    workflow = yaml.safe_load(path.read_text())
    spec = workflow["jobs"][job]
    steps_ctx: dict[str, dict[str, Any]] = {}
    result = JobRun()
    failed = False
    added_path: list[str] = []  # what steps wrote to $GITHUB_PATH, newest first
    env_of = {k: evaluate(str(v), context, steps_ctx) for k, v in (workflow.get("env") or {}).items()}
    env_of.update({k: evaluate(str(v), context, steps_ctx) for k, v in (spec.get("env") or {}).items()})
    for step in spec["steps"]:
        name = step.get("name") or step.get("uses") or step.get("run", "").splitlines()[0]
        sid = step.get("id")
        wanted = condition(step["if"], failed, steps_ctx) if "if" in step else not failed
        if not wanted:
            result.steps.append(StepResult(name, sid, "skipped"))
            if sid:
                steps_ctx[sid] = {"outcome": "skipped", "outputs": {}}
            continue
        env = {**base_env, **env_of, **{k: evaluate(str(v), context, steps_ctx) for k, v in (step.get("env") or {}).items()}}
        if added_path:
            env["PATH"] = os.pathsep.join([*added_path, env.get("PATH", "")])
        if before_step is not None:
            before_step(step)
        for var in ("GITHUB_OUTPUT", "GITHUB_PATH"):
            with tempfile.NamedTemporaryFile("w+", suffix=".out", delete=False) as out_file:
                env[var] = out_file.name
        uses = (step.get("uses") or "").split("@")[0]
        key = uses if uses in stand_ins else name if name in stand_ins else None
        output = ""
        if key is not None:
            stand_in = stand_ins[key]
            code = 0 if stand_in is None else stand_in(env)
        elif uses:
            raise AssertionError(f"no stand-in for the action {uses}")
        else:
            script = evaluate(step["run"], context, steps_ctx)
            proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], env=env, cwd=cwd,
                                  capture_output=True, text=True, timeout=timeout)
            code, output = proc.returncode, proc.stdout + proc.stderr
        outputs = dict(line.split("=", 1) for line in Path(env["GITHUB_OUTPUT"]).read_text().splitlines() if "=" in line)
        added_path[:0] = reversed(Path(env["GITHUB_PATH"]).read_text().split())
        os.unlink(env["GITHUB_OUTPUT"])
        os.unlink(env["GITHUB_PATH"])
        outcome = "success" if code == 0 else "failure"
        failed = failed or code != 0
        result.steps.append(StepResult(name, sid, outcome, output))
        if sid:
            steps_ctx[sid] = {"outcome": outcome, "outputs": outputs}
    return result
