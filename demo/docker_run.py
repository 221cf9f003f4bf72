"""make demo-docker: the demo's story (deploy, a refused self-approval, rollback, 0 failed requests)
with the portal in containers: each version is built by the deploy's build step FROM scratch
(a static busybox serving its version, tests/docker/app), run by Podman or Docker behind the same
HAProxy, and removed afterwards. Needs an engine that can run containers; says why not otherwise.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo import run  # noqa: E402
from tests.docker import app_context, engine, engine_unavailable, remove_everything  # noqa: E402

IMAGE = f"localhost/recess-demo-portal-{os.getpid()}"


def docker_config(workdir: Path, listen: int, blue: int, green: int) -> Any:
    """demo/recess.demo.toml with the portal as a docker service (same ports, same smoke test)."""
    from commands.config import parse_config

    data = tomllib.loads(run.CONFIG.read_text())
    data["bot"].update(database=str(workdir / "recess.db"), state_dir=str(workdir / "state"))
    web = data["services"][run.SERVICE]
    context = app_context(workdir / "portal-image")
    smoke = web.get("smoke", "")
    if smoke.startswith("python "):
        smoke = sys.executable + smoke[len("python"):]
    data["services"][run.SERVICE] = {
        "platform": "docker", "environments": web.get("environments", ["production"]), "health_path": "/health",
        "health_timeout": "30s", "smoke": smoke, "keep_images": 2,
        "docker": {"image": IMAGE, "port": 8000, "listen": f"127.0.0.1:{listen}", "engine": engine(),
                   "slots": {"blue": f"127.0.0.1:{blue}", "green": f"127.0.0.1:{green}"},
                   "build": {"context": str(context)}},
    }
    return parse_config(data, source=str(run.CONFIG.relative_to(run.ROOT)) + " (docker)", base_dir=run.DEMO_DIR)


def main() -> int:
    reason = engine_unavailable()
    if reason:
        print(f"recess demo-docker: skipped: {reason}")
        return 0
    if not shutil.which("haproxy"):
        print("recess demo-docker: HAProxy is not installed: apt-get install haproxy")
        return 2
    run.demo_config = docker_config
    print(f"(containers: {engine()}; the images {IMAGE}:VERSION are built by each deploy's build step)")
    try:
        return run.main()
    finally:
        remove_everything(run.SERVICE, IMAGE)


if __name__ == "__main__":
    sys.exit(main())
