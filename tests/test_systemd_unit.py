"""deploy/recess.service runs `recess serve`, restarts it on failure, and stopping it stops only
recess: the slots and HAProxy keep serving (issue 9, finding 10)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "recess.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: [Section], Key=value, '#' and ';' comments, keys may repeat."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{line!r} before any [Section]"
        key, sep, value = line.partition("=")
        assert sep, f"not Key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit():
    return parse_unit(UNIT.read_text())


def test_stopping_the_unit_signals_recess_alone_so_slots_and_haproxy_keep_serving(unit):
    assert unit["Service"]["KillMode"] == ["process"]


def test_the_unit_runs_recess_serve_and_restarts_it_on_failure(unit):
    service = unit["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "recess" and argv[1] == "serve"
    assert service["Restart"] == ["on-failure"]
    # exit 2: bad configuration, or another recess owns the database; a restart cannot help
    assert service["RestartPreventExitStatus"] == ["2"]


def test_the_unit_reads_slack_secrets_from_a_file_and_runs_in_its_folder(unit):
    service = unit["Service"]
    assert service["EnvironmentFile"] and service["WorkingDirectory"]
    assert "RECESS_CONFIG=" in " ".join(service.get("Environment", []))
    assert not any(key in service for key in ("PrivateTmp", "ProtectSystem")), \
        "the slots outlive recess and must see the same files as the next recess"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path):
    # The shipped paths are for /srv/recess; point them at this checkout so verify can check them.
    text = UNIT.read_text().replace("/srv/recess", str(ROOT))
    copy = tmp_path / "recess.service"
    copy.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "recess.service" in line]
    assert done.returncode == 0 and complaints == [], done.stdout + done.stderr
