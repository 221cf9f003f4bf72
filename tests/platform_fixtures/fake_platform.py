"""A platform driven by shell commands, as a team would script one: state lives in $FAKE_STATE.

    python fake_platform.py start|stop|shift|status|health|migrate

Every call appends its RECESS_* variables to $FAKE_STATE/calls.jsonl so tests can check them.
FAKE_FAIL=<operation> makes that operation fail with exit code 7.
"""

import json
import os
import sys
from pathlib import Path

state = Path(os.environ["FAKE_STATE"])
state.mkdir(parents=True, exist_ok=True)
op = sys.argv[1]
recess = {k: v for k, v in os.environ.items() if k.startswith("RECESS_") or k == "PGOPTIONS"}
with open(state / "calls.jsonl", "a") as f:
    f.write(json.dumps({"op": op, "env": recess}) + "\n")

if os.environ.get("FAKE_FAIL") == op:
    print(f"{op} went wrong on purpose", file=sys.stderr)
    sys.exit(7)

versions_file, weights_file = state / "versions.json", state / "weights.json"
versions = json.loads(versions_file.read_text()) if versions_file.exists() else {"blue": None, "green": None}
weights = json.loads(weights_file.read_text()) if weights_file.exists() else {"blue": 0, "green": 0}

if op == "start":
    versions[os.environ["RECESS_SLOT"]] = os.environ["RECESS_VERSION"]
elif op == "stop":
    versions[os.environ["RECESS_SLOT"]] = None
elif op == "shift":
    weights = dict(pair.split("=") for pair in os.environ["RECESS_WEIGHTS"].split(","))
    weights = {k: int(v) for k, v in weights.items()}
elif op == "status":
    print(json.dumps({"weights": weights, "versions": versions}))
elif op == "health":
    sys.exit(0 if versions[os.environ["RECESS_SLOT"]] else 1)
elif op == "migrate":
    print(f"migrated to {os.environ['RECESS_VERSION']}")

versions_file.write_text(json.dumps(versions))
weights_file.write_text(json.dumps(weights))
