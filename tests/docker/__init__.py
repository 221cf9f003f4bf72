"""A real container engine for the docker platform's tests, or one reason why there is none.

    reason = engine_unavailable()          # None when Podman (or Docker) can run containers here
    context = app_context(tmp_path)        # the test app's build context, busybox included

Podman needs a `containers.conf` on these machines (../shared/design/FACTS.md): crun refuses the
host's hybrid cgroups and the sandbox forbids setting RLIMIT_NOFILE/NPROC, so the tests run Podman
with `runtime = "runc"` and fixed ulimits through CONTAINERS_CONF. That file is for the tests only;
real hosts need nothing of it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).parent
BUSYBOX = Path("/bin/busybox")
CONTAINERS_CONF = """\
# Written by recess's tests (tests/docker): Podman on these machines, not for users.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
"""


def engine() -> str:
    """The engine the tests use: RECESS_TEST_ENGINE (podman or docker) when set, else Podman when
    installed (it needs no daemon), else Docker."""
    chosen = os.environ.get("RECESS_TEST_ENGINE")
    if chosen in ("podman", "docker"):
        return chosen
    return "podman" if shutil.which("podman") else "docker"


def require_engine() -> None:
    """Skips the calling test when no engine can run containers: one reason, raised from this one
    line, so pytest's summary folds every container test into one line saying why."""
    import pytest

    reason = engine_unavailable()
    if reason:
        pytest.skip(reason)


def use_test_containers_conf() -> None:
    """Points Podman at the tests' containers.conf (in the temp folder, for this process and its children)."""
    if engine() != "podman" or os.environ.get("CONTAINERS_CONF"):
        return
    path = Path(tempfile.gettempdir()) / "recess-tests-containers.conf"
    path.write_text(CONTAINERS_CONF)
    os.environ["CONTAINERS_CONF"] = str(path)


def app_context(folder: Path) -> Path:
    """The test app's build context under `folder` (Dockerfile, start script, a static busybox)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("Dockerfile", "start.sh"):
        shutil.copy(HERE / "app" / name, folder / name)
    if BUSYBOX.is_file():  # without it the probe says why, and the config still loads
        shutil.copy(BUSYBOX, folder / "busybox")
    return folder


@functools.cache
def engine_unavailable() -> str | None:
    """Why no container can run here (one line), or None: builds the test app once and runs it."""
    use_test_containers_conf()
    name = engine()
    if not shutil.which(name):
        return "no container engine: install podman (make test does, with apt-get, when it may)"
    if not BUSYBOX.is_file():
        return "no static busybox for the test image: apt-get install busybox-static"
    image = f"localhost/recess-probe:{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        context = app_context(Path(tmp) / "app")
        steps = [
            [name, "build", "-q", "-t", image, "--build-arg", "RECESS_VERSION=probe", str(context)],
            [name, "run", "--rm", image, "/bin/true"],
        ]
        try:
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, timeout=120)
                if done.returncode != 0:
                    last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
                    return f"{name} cannot run containers here ({' '.join(step[:2])}: {last[0][:200]})"
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{name} cannot run containers here ({exc})"
        finally:
            subprocess.run([name, "rmi", "-f", image], capture_output=True, timeout=60)
    return None


def unique(prefix: str) -> str:
    """A name no other test (or concurrent run) uses: services, images and containers stay apart."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def remove_everything(name: str, image: str) -> None:
    """Removes the containers of service `name` that run `image` (only those: a demo and a benchmark
    may both deploy a service called web on this engine), and every tag of `image`."""
    eng = engine()
    listed = subprocess.run([eng, "ps", "-a", "--no-trunc", "--filter", f"label=recess.service={name}", "--format",
                             "{{.ID}} {{.Image}}"], capture_output=True, text=True, timeout=60).stdout.splitlines()
    ids = [line.split()[0] for line in listed if len(line.split()) == 2 and line.split()[1].startswith(f"{image}:")]
    if ids:
        subprocess.run([eng, "rm", "-f", *ids], capture_output=True, timeout=120)
    tags = subprocess.run([eng, "images", image, "--format", "{{.Repository}}:{{.Tag}}"],
                          capture_output=True, text=True, timeout=60).stdout.split()
    if tags:
        subprocess.run([eng, "rmi", "-f", *tags], capture_output=True, timeout=120)
