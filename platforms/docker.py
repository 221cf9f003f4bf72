"""The `docker` platform: each slot is a container of IMAGE:VERSION, HAProxy routes the public address.

The engine is the `docker` or `podman` CLI (they agree on every verb used here). A slot's container
is named `recess-SERVICE-ENV-SLOT`, labelled with the service, environment, slot and version, runs
detached with `--restart unless-stopped` and is published on the slot's host address
(`-p HOST:PORT:port`). The engine keeps the containers, so stopping or restarting the bot never
touches them, and `status()` reads the engine (`ps`/`inspect` by label) and the router, never the
store. The router is the same `HAProxyRouter` the `local` platform uses, with its files in the
service's state directory.

The engine CLI gets an allow-listed environment (platforms/environment.py) plus the variables
that say where the engine is (DOCKER_HOST, including ssh://user@host, and Podman's CONTAINER_HOST):
recess's own Slack credentials reach neither the engine nor a container. A container sees the
RECESS_* values of its deploy and the service's `env`/`pass_env` names, handed over as `-e NAME`
so that their values never appear on a command line; anything else comes from `run_args`.

    platform = DockerPlatform("core", "production", spec, state_dir, workdir=cfg.base_dir)
    platform.build("v2", progress=print)      # or skipped when core:v2 exists already
    platform.start("green", "v2"); platform.shift({"blue": 0, "green": 100})
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from platforms.base import SLOTS, Health, PlatformError, Result, RouterStats, SlotState, Traffic
from platforms.environment import child_env
from platforms.haproxy import HAProxyRouter, PreparedFlip, Revival
from platforms.host import StateLock

if TYPE_CHECKING:
    from commands.config import Service

log = logging.getLogger(__name__)

__all__ = ["ENGINE_VARIABLES", "Built", "DockerPlatform", "engine_env"]

# Where the engine is and how to reach it: passed to the engine CLI (never into a container).
ENGINE_VARIABLES = (
    "DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY",
    "DOCKER_API_VERSION", "DOCKER_BUILDKIT", "CONTAINER_HOST", "CONTAINER_SSHKEY", "CONTAINER_CONNECTION",
    "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF", "REGISTRY_AUTH_FILE",
    "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "SSH_AUTH_SOCK",
)
INSTALL_HINT = {
    "docker": "install Docker Engine (https://docs.docker.com/engine/install/) or set engine = \"podman\"",
    "podman": "install Podman: apt-get install podman",
}
LABEL = "recess"  # labels: recess.service, recess.env, recess.slot, recess.version
FAIL_LINES = 40  # lines of a failed build's output shown in the thread
LOG_LINES = 20  # lines of an exited container's log shown in the thread
OUTPUT_CHARS = 20000
NAME_PART = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# Build progress, as Podman/Buildah ("STEP 3/8: RUN ..."), BuildKit ("#7 [2/4] RUN ...") and
# Docker's classic builder ("Step 3/8 : RUN ...") print it.
STEP_LINE = re.compile(r"^(?:STEP (\d+)/(\d+): |Step (\d+)/(\d+) : |#\d+ \[(?:[\w-]+ )?\s*(\d+)/(\d+)\] )(.*)$")


def engine_env(spec: Service | None, extra: Mapping[str, str] = {}) -> dict[str, str]:  # noqa: B006 (never mutated)
    """The engine CLI's environment: the allow-list of child_env, the engine's own variables, and
    `extra` (the values handed to a container by name with `-e NAME`)."""
    where = {name: os.environ[name] for name in ENGINE_VARIABLES if name in os.environ}
    return child_env(spec, {**where, **dict(extra)})


@dataclass(frozen=True)
class Built:
    """What the build step did: built, pulled, or skipped (then `skipped` says why)."""

    detail: str
    skipped: bool = False
    image_id: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class Container:
    id: str
    name: str
    slot: str | None
    version: str | None
    status: str  # running, exited, restarting, created, ...
    running: bool
    exit_code: int | None
    restarts: int

    @property
    def crashed(self) -> bool:
        """It exited, or exited and was started again by its restart policy."""
        return not self.running or self.status == "restarting" or self.restarts > 0


class DockerPlatform:
    """Two slots as containers of one engine, behind one HAProxy. Bound to service + env."""

    def __init__(
        self,
        service: str,
        env: str,
        spec: Service,
        state_dir: Path,
        *,
        workdir: Path | None = None,
        haproxy_bin: str = "haproxy",
        start_grace: float = 0.5,
        stop_timeout: int = 10,
        health_timeout: float = 2.0,
        engine_timeout: float = 120.0,
        build_timeout: float = 3600.0,
        migrate_timeout: float | None = None,
    ) -> None:
        if spec.docker is None:
            raise PlatformError(f"service {service!r} has no [services.{service}.docker] table")
        if not NAME_PART.fullmatch(env):
            raise PlatformError(f"environment {env!r} cannot be part of a container name: use letters, digits, "
                                f"'_', '.' and '-'")
        self.service = service
        self.env = env
        self.spec = spec
        self.settings = spec.docker
        self.engine = spec.docker.engine
        self.image = spec.docker.image
        self.health_path = spec.health_path
        self.state_dir = Path(state_dir).absolute()
        self.workdir = Path(workdir).absolute() if workdir else self.state_dir
        self.start_grace = start_grace
        self.stop_timeout = stop_timeout
        self.health_timeout = health_timeout
        self.engine_timeout = engine_timeout
        self.build_timeout = build_timeout
        self.migrate_timeout = migrate_timeout
        self.keep_images = spec.docker.keep_images or spec.keep_images
        self.router = HAProxyRouter(service, env, spec.docker.listen, spec.docker.slots, self.state_dir,
                                    haproxy_bin=haproxy_bin)
        self.engine_seconds = 0.0  # time spent waiting for the engine CLI (the benchmark's split)
        self._engine_guard = threading.Lock()

    @property
    def last_router_call_seconds(self) -> float | None:
        return self.router.last_call_seconds

    def container_name(self, slot: str) -> str:
        return f"recess-{self.service}-{self.env}-{slot}"

    def ref(self, version: str) -> str:
        return f"{self.image}:{version}"

    # -- the protocol ----------------------------------------------------------------------------

    def status(self) -> Traffic:
        """What runs in each slot (from the engine) and the router's live weights. Never starts or
        stops anything; a router that does not answer is reported as down, one never started
        reports nothing routed."""
        router_up = True
        weights = {s: 0 for s in SLOTS}
        if self.router.started():
            try:
                weights = self.router.weights()
            except PlatformError as exc:
                log.warning("%s/%s: router is not up: %s", self.service, self.env, exc)
                router_up = False
        if router_up and self.router.started() and weights != self.router.saved_weights():
            self.router.follow(weights)  # someone used the runtime API by hand: follow the router
        found = self.containers()
        slots = {}
        for slot in SLOTS:
            c = found.get(slot)
            running = c is not None and c.running
            slots[slot] = SlotState(slot=slot, version=c.version if running and c else None, running=running,
                                    weight=weights[slot], address=self.settings.slots[slot])
        return Traffic(slots=slots, router_up=router_up)

    def start(self, slot: str, version: str) -> None:
        self._check_slot(slot)
        self._check_version(version)
        self.router.ensure_running()
        with StateLock.at(self._path(f"{slot}.lock")):
            self._remove(slot)
            if not self.settings.pull and not self.image_exists(version):
                raise PlatformError(f"image {self.ref(version)} is not on this engine: build it first "
                                    f"([services.{self.service}.docker] build) or set pull = true")
            host, port = self.settings.slots[slot].rsplit(":", 1)
            name = self.container_name(slot)
            values = self._recess_env(slot, version)
            args = ["run", "-d", "--name", name, *self._labels(slot, version),
                    "--restart", "unless-stopped", "--pull", "missing" if self.settings.pull else "never",
                    "-p", f"{host}:{port}:{self.settings.port}", *self._env_args(values),
                    *self.settings.run_args, self.ref(version)]
            self._engine(args, extra_env=values, what=f"start {version} in slot {slot}")
            log.info("%s/%s: started %s in %s (container %s)", self.service, self.env, version, slot, name)
            deadline = time.monotonic() + self.start_grace
            while True:
                c = self.container(slot)
                if c is None or c.crashed:
                    detail = self._exit_detail(slot, c)
                    self._remove(slot)
                    raise PlatformError(f"{self.service} {version} exited at once in slot {slot}{detail[0]}",
                                        output=detail[1])
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.1)

    def stop(self, slot: str, version: str | None = None) -> None:
        """Stops the slot's container with the engine's grace period (`stop -t`) and removes it;
        with `version`, only when that version is what runs there."""
        self._check_slot(slot)
        with StateLock.at(self._path(f"{slot}.lock")):
            if version is not None:
                c = self.container(slot)
                if c is not None and c.running and c.version != version:
                    raise PlatformError(f"slot {slot} runs {c.version}, not {version}: not stopping it")
            self._remove(slot)

    def health(self, slot: str) -> Health:
        """One probe of the slot's health path. A 200 needs no engine call (it is the common case,
        and rollback clicks probe blue right before the flip); any other answer asks the engine
        whether the container is gone or exited, which fails at once with its exit code and log."""
        self._check_slot(slot)
        url = self.base_url(slot) + self.health_path
        try:
            with httpx.Client(timeout=self.health_timeout, trust_env=False) as client:
                resp = client.get(url)
        except httpx.HTTPError as exc:
            answer = Health(ok=False, detail=f"GET {url}: no answer ({type(exc).__name__}: {exc})")
        else:
            body = resp.text.strip().replace("\n", " ")[:200]
            answer = Health(ok=resp.status_code == 200, status=resp.status_code,
                            detail=f"GET {url}: {resp.status_code} {body}")
            if answer.ok:
                return answer
        c = self.container(slot)
        if c is None:
            return Health(ok=False, detail=f"nothing runs in slot {slot}", exited=True)
        if c.crashed:
            how, last = self._exit_detail(slot, c)
            detail = f"the container of {c.version} in slot {slot} exited{how}"
            return Health(ok=False, detail=detail + (f"; its last log lines:\n{last}" if last else ""), exited=True)
        return answer

    def shift(self, weights: Mapping[str, int]) -> None:
        self.router.set_weights(weights)

    def prepared_shift(self, weights: Mapping[str, int]) -> contextlib.AbstractContextManager[PreparedFlip]:
        """The weight change made ready to fire (HAProxyRouter.prepared): releases flip back to back."""
        return self.router.prepared(weights)

    def migrate(self, slot: str, version: str, env: Mapping[str, str]) -> Result:
        """`migrate` as a one-off `ENGINE run --rm` of IMAGE:VERSION with the service's run_args and
        `env` (PGOPTIONS with lock_timeout and statement_timeout)."""
        self._check_slot(slot)
        self._check_version(version)
        if not self.settings.migrate:
            return Result(ok=True, output="no migrate command")
        name = f"recess-{self.service}-{self.env}-migrate"
        values = {**self._recess_env(slot, version), **dict(env)}
        self._engine(["rm", "-f", name], check=False, what="remove an old migration container")
        args = ["run", "--rm", "--name", name, *self._labels("migrate", version), "--pull", "never",
                *self._env_args(values), *self.settings.run_args, self.ref(version), *self.settings.migrate]
        try:
            done = self._engine(args, extra_env=values, check=False, timeout=self.migrate_timeout,
                                what="run the migrations")
        except PlatformError as exc:
            self._engine(["rm", "-f", name], check=False, what="remove the migration container")
            return Result(ok=False, output=_trim(f"{exc}\n{exc.output}"))
        return Result(ok=done.returncode == 0, output=_trim(done.stdout), exit_code=done.returncode)

    def base_url(self, slot: str) -> str:
        self._check_slot(slot)
        return "http://" + self.settings.slots[slot]

    def router_stats(self) -> dict[str, RouterStats]:
        return self.router.stats()

    def drain(self, slot: str, timeout: float) -> None:
        self._check_slot(slot)
        self.router.drain(slot, timeout)

    def probe_public(self) -> Health:
        return self.router.probe_public(self.health_path, timeout=self.health_timeout)

    def watch_router(self) -> Revival | None:
        return self.router.revive()

    # -- building and images ---------------------------------------------------------------------

    def build(self, version: str, progress: Callable[[str], None] = lambda text: None, *,
              may_build: bool = True) -> Built:
        """Makes IMAGE:VERSION present on the engine: skipped when it is there already (rollbacks and
        redeploys never rebuild), pulled with `pull = true`, else built from `build`. `progress`
        gets the current build step and elapsed time; raising from it stops the build. Raises
        PlatformError with the last 40 lines of output when the build fails."""
        self._check_version(version)
        ref = self.ref(version)
        found = self.image_info(version)
        if found is not None:
            return Built(f"skipped: {ref} already exists on the engine (image {found[0][:12]}, {_size(found[1])}); "
                         f"a version is built once", skipped=True, image_id=found[0], size=found[1])
        started = time.monotonic()
        if self.settings.pull:
            progress(f"pulling {ref}")
            self._engine(["pull", ref], timeout=self.build_timeout, what=f"pull {ref}")
            how = "pulled"
        elif self.settings.build is not None and not may_build:
            # A rollback picks an earlier version itself: building today's context under that
            # version's tag would run other code than the one that was live.
            raise PlatformError(f"image {ref} is no longer on the engine (older than the newest keep_images); recess "
                                f"does not rebuild an earlier version from today's context: build it from its own "
                                f"commit, or set pull = true and keep it in a registry")
        elif self.settings.build is not None:
            self._run_build(version, progress)
            how = "built"
        else:
            raise PlatformError(f"image {ref} is not on the engine, and [services.{self.service}.docker] has neither "
                                f"build nor pull = true")
        info = self.image_info(version)
        if info is None:
            raise PlatformError(f"{self.engine} {how} {ref} but does not show it afterwards")
        return Built(f"{how} {ref} in {time.monotonic() - started:.1f} s: image {info[0][:12]}, {_size(info[1])}",
                     image_id=info[0], size=info[1])

    def _run_build(self, version: str, progress: Callable[[str], None]) -> None:
        try:
            self._run_build_once(version, progress)
        except PlatformError as exc:
            # Podman's layer cache can name an intermediate image another build or `rmi` just
            # removed ("layer not known"): that build is sound, only the cache is stale. Once more
            # without the cache.
            if "layer not known" not in exc.output:
                raise
            log.warning("%s/%s: %s build cache was stale (%s); building again without it", self.service, self.env,
                        self.engine, exc.output.strip().splitlines()[-1][:200])
            self._run_build_once(version, progress, no_cache=True)

    def _run_build_once(self, version: str, progress: Callable[[str], None], *, no_cache: bool = False) -> None:
        build = self.settings.build
        assert build is not None
        context = Path(build.context)
        context = context if context.is_absolute() else self.workdir / context
        args = [self._binary(), "build", "-t", self.ref(version), "-f", str(context / build.dockerfile),
                "--label", f"{LABEL}.service={self.service}", "--label", f"{LABEL}.version={version}"]
        if no_cache:
            args.append("--no-cache")
        for key, value in build.args.items():
            args += ["--build-arg", f"{key}={value}"]
        args += ["--build-arg", f"RECESS_VERSION={version}", str(context)]
        lines: collections.deque[str] = collections.deque(maxlen=FAIL_LINES)
        started = time.monotonic()
        try:
            # BuildKit: one line per event, not a redrawn screen (the legacy builder ignores it,
            # and refuses a --progress flag).
            env = engine_env(None, {"BUILDKIT_PROGRESS": "plain"} if self.engine == "docker" else {})
            proc = subprocess.Popen(args, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise PlatformError(f"cannot run {self.engine}: {exc}; {INSTALL_HINT[self.engine]}") from None
        timer = threading.Timer(self.build_timeout, _kill_group, (proc,))
        timer.daemon = True
        timer.start()
        current = "starting"
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                if not line:
                    continue
                lines.append(line)
                m = STEP_LINE.match(line)
                if m:
                    n, total = next((g for g in zip(m.groups()[0:6:2], m.groups()[1:6:2], strict=True) if g[0]), ("?", "?"))
                    current = f"step {n}/{total}: {m.group(7)[:120]}"
                progress(f"{current} ({time.monotonic() - started:.0f} s)")
            code = proc.wait()
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        finally:
            timer.cancel()
            self._add_engine_time(time.monotonic() - started)
        if code != 0:
            ran_out = time.monotonic() - started >= self.build_timeout
            why = f"ran longer than {self.build_timeout:.0f} s and was stopped" if ran_out else f"exited {code}"
            said = f": {lines[-1][:300]}{self._down_hint(lines[-1])}" if lines and self._down_hint(lines[-1]) else ""
            raise PlatformError(f"{self.engine} build of {self.ref(version)} {why}{said}", output="\n".join(lines))

    def image_exists(self, version: str) -> bool:
        return self.image_info(version) is not None

    def image_info(self, version: str) -> tuple[str, int] | None:
        """(image ID, size in bytes) of IMAGE:VERSION on the engine, None when it is not there."""
        done = self._engine(["image", "inspect", self.ref(version)], check=False, what="inspect an image")
        if done.returncode != 0:
            return None
        try:
            data = json.loads(done.stdout)[0]
            return str(data.get("Id", "")).removeprefix("sha256:"), int(data.get("Size") or 0)
        except (ValueError, IndexError, TypeError, AttributeError):
            return None

    def prune_images(self, keep: int | None = None) -> list[str]:
        """Removes the service's images older than the newest `keep` (default keep_images), never one
        a slot runs; returns the versions removed. An image the engine refuses to remove stays."""
        keep = self.keep_images if keep is None else keep
        listed = self._engine(["images", self.image, "--format", "{{.Tag}}"], check=False, what="list images")
        tags = sorted({t.strip() for t in listed.stdout.splitlines() if t.strip() and t.strip() != "<none>"})
        if len(tags) <= keep:
            return []
        done = self._engine(["image", "inspect", *[self.ref(t) for t in tags]], check=False, what="inspect images")
        try:
            images = json.loads(done.stdout or "[]")
        except ValueError:
            images = []
        created: dict[str, str] = {}
        for image in images:
            stamp = str(image.get("Created", "")).replace("T", " ")[:26]
            for ref in image.get("RepoTags") or []:
                tag = ref.rsplit(":", 1)[-1]
                if tag in tags:
                    created[tag] = stamp
        in_use = {c.version for c in self.containers(every=True).values() if c.version}
        newest_first = sorted(tags, key=lambda t: created.get(t, ""), reverse=True)
        removed = []
        for tag in newest_first[keep:]:
            if tag in in_use:
                continue
            gone = self._engine(["rmi", self.ref(tag)], check=False, what=f"remove {self.ref(tag)}")
            if gone.returncode == 0:
                removed.append(tag)
            else:
                log.warning("%s/%s: %s rmi %s refused: %s", self.service, self.env, self.engine, self.ref(tag),
                            gone.stdout.strip()[-300:])
        if removed:
            log.info("%s/%s: removed old images %s", self.service, self.env, ", ".join(removed))
        return removed

    # -- beyond the protocol ---------------------------------------------------------------------

    def ensure_router(self) -> None:
        self.router.ensure_running()

    def router_running(self) -> bool:
        return self.router.answers()

    def shutdown(self) -> None:
        """Stops both slots' containers and HAProxy (`recess down`, tests, the demo's clean-up)."""
        for slot in SLOTS:
            self.stop(slot)
        self.router.stop()

    def containers(self, *, every: bool = False) -> dict[str, Container]:
        """This service's slot containers by slot, from one `ps` by label (what status() reads).
        With `every`, the migration container too (keyed "migrate"). `ps` does not tell restarts:
        health() and start() inspect the slot's container for that."""
        filters = ["--filter", f"label={LABEL}.service={self.service}", "--filter", f"label={LABEL}.env={self.env}"]
        if self.engine == "podman":
            listed = self._engine(["ps", "-a", *filters, "--format", "json"], what="list containers")
            try:
                items = json.loads(listed.stdout or "[]") or []
            except ValueError as exc:
                raise PlatformError("podman ps answered something that is not JSON", output=listed.stdout[-500:]) from exc
            rows = [(str(i.get("Id", "")), (i.get("Names") or [""])[0], i.get("Labels") or {}, str(i.get("State", "")),
                     i.get("ExitCode")) for i in items]
        else:
            listed = self._engine(["ps", "-a", "--no-trunc", *filters, "--format", "{{json .}}"], what="list containers")
            rows = []
            for line in listed.stdout.splitlines():
                try:
                    i = json.loads(line)
                except ValueError:
                    continue
                labels = dict(pair.split("=", 1) for pair in str(i.get("Labels", "")).split(",") if "=" in pair)
                rows.append((str(i.get("ID", "")), str(i.get("Names", "")), labels, str(i.get("State", "")), None))
        found: dict[str, Container] = {}
        for cid, name, labels, state, code in rows:
            c = self._container(cid, name, labels, {"Status": state, "Running": state == "running", "ExitCode": code}, 0)
            if c is None or (c.slot == "migrate" and not every):
                continue
            if c.slot not in found or (c.running and not found[c.slot].running):
                found[c.slot] = c  # someone ran a second container with our labels: the live one counts
        return found

    def container(self, slot: str) -> Container | None:
        """The slot's container, inspected by its name (state, exit code, restarts), or None."""
        done = self._engine(["inspect", "--type", "container", self.container_name(slot)], check=False,
                            what="inspect a container")
        if done.returncode != 0:
            return None
        try:
            item = json.loads(done.stdout or "[]")[0]
        except (ValueError, IndexError):
            return None
        c = self._container(str(item.get("Id", "")), str(item.get("Name", "")), (item.get("Config") or {}).get("Labels") or {},
                            item.get("State") or {}, int(item.get("RestartCount") or 0))
        return c if c is not None and c.slot == slot else None

    def _container(self, cid: str, name: str, labels: Mapping[str, str], state: Mapping[str, Any],
                   restarts: int) -> Container | None:
        if labels.get(f"{LABEL}.service") != self.service or labels.get(f"{LABEL}.env") != self.env:
            return None
        slot = labels.get(f"{LABEL}.slot")
        if slot not in (*SLOTS, "migrate"):
            return None
        return Container(id=cid, name=name.lstrip("/"), slot=slot, version=labels.get(f"{LABEL}.version"),
                         status=str(state.get("Status", "")), running=bool(state.get("Running")),
                         exit_code=state.get("ExitCode"), restarts=restarts)

    # -- inside ----------------------------------------------------------------------------------

    def _binary(self) -> str:
        binary = shutil.which(self.engine)
        if not binary:
            raise PlatformError(f"{self.engine} is not installed: {INSTALL_HINT[self.engine]}")
        return binary

    def _engine(self, args: Sequence[str], *, extra_env: Mapping[str, str] = {}, check: bool = True,  # noqa: B006
                timeout: float | None = -1, what: str = "") -> subprocess.CompletedProcess[str]:
        """One engine CLI call (no shell), stdout and stderr together. With `check`, a failure
        raises PlatformError with the engine's own message and the install hint."""
        command = [self._binary(), *args]
        limit = self.engine_timeout if timeout == -1 else timeout
        started = time.monotonic()
        try:
            done = subprocess.run(command, cwd=self.workdir, env=engine_env(self.spec, extra_env),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, errors="replace", timeout=limit, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise PlatformError(f"{self.engine} {args[0]} did not finish within {limit:.0f} s ({what})") from None
        except OSError as exc:
            raise PlatformError(f"cannot run {self.engine}: {exc}; {INSTALL_HINT[self.engine]}") from None
        finally:
            self._add_engine_time(time.monotonic() - started)
        if check and done.returncode != 0:
            message = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"exit code {done.returncode}"
            hint = self._down_hint(done.stdout)
            raise PlatformError(f"{self.engine} could not {what or args[0]}: {message[:300]}{hint}",
                                output=_trim(done.stdout))
        return done

    def _down_hint(self, output: str) -> str:
        """The install hint, when the engine's answer says it is not there or not running."""
        if re.search(r"cannot connect|connection refused|no such file or directory.*sock|is the docker daemon",
                     output, re.IGNORECASE):
            return f" (is the engine running? {INSTALL_HINT[self.engine]})"
        return ""

    def _add_engine_time(self, seconds: float) -> None:
        with self._engine_guard:
            self.engine_seconds += seconds

    def _remove(self, slot: str) -> None:
        """Stops (with the grace period) and removes the slot's container, if there is one."""
        name = self.container_name(slot)
        c = self.container(slot)
        if c is None:
            self._engine(["rm", "-f", name], check=False, what=f"remove {name}")  # a stray one with our name
            return
        if c.running:
            log.info("%s/%s: stopping slot %s (%s)", self.service, self.env, slot, c.name)
            self._engine(["stop", "-t", str(self.stop_timeout), c.id], check=False,
                         timeout=self.stop_timeout + self.engine_timeout, what=f"stop {c.name}")
        self._engine(["rm", "-f", c.id], what=f"remove {c.name}")

    def _exit_detail(self, slot: str, c: Container | None) -> tuple[str, str]:
        """(" with exit code N", the last log lines) of the slot's container."""
        if c is None:
            return "", ""
        deadline = time.monotonic() + 2
        while c.running and c.restarts and not c.exit_code and time.monotonic() < deadline:
            # Podman resets the exit code when its restart policy starts the container again: look
            # for a moment between two runs, when the engine shows how the last one ended.
            time.sleep(0.05)
            c = self.container(slot) or c
        exited = c.exit_code is not None and (not c.running or c.restarts > 0)
        how = f" with exit code {c.exit_code}" if exited else ""
        if c.restarts:
            how += f" (restarted {c.restarts} time{'s' if c.restarts != 1 else ''} by its restart policy)"
        logs = self._engine(["logs", "--tail", str(LOG_LINES), c.id], check=False, what="read the container's log")
        return how, logs.stdout.strip()

    def _labels(self, slot: str, version: str) -> list[str]:
        out = []
        for key, value in (("service", self.service), ("env", self.env), ("slot", slot), ("version", version)):
            out += ["--label", f"{LABEL}.{key}={value}"]
        return out

    def _env_args(self, values: Mapping[str, str]) -> list[str]:
        """`-e NAME` for each variable the container gets: its value travels in the CLI's environment."""
        names = [*values, *self.spec.env, *[n for n in self.spec.pass_env if n in os.environ]]
        return [arg for name in dict.fromkeys(names) for arg in ("-e", name)]

    def _recess_env(self, slot: str, version: str) -> dict[str, str]:
        return {"RECESS_SERVICE": self.service, "RECESS_VERSION": version, "RECESS_SLOT": slot,
                "RECESS_PORT": str(self.settings.port), "RECESS_ENV": self.env}

    def _check_slot(self, slot: str) -> None:
        if slot not in SLOTS:
            raise PlatformError(f"unknown slot {slot!r}: expected blue or green")

    def _check_version(self, version: str) -> None:
        if not isinstance(version, str) or not TAG.fullmatch(version):
            raise PlatformError(f"version {version!r} is not a valid image tag (letters, digits, '_', '.' and '-', "
                                f"at most 128 characters, not starting with '.' or '-')")

    def _path(self, name: str) -> Path:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self.state_dir / name


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _size(size: int | None) -> str:
    if not size:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def _trim(output: str) -> str:
    return output if len(output) <= OUTPUT_CHARS else "...\n" + output[-OUTPUT_CHARS:]
