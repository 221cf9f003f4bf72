"""recess.toml: the configuration's shape, its defaults, and validation with errors that name the key.

Every key and its default is documented in docs/configuration.md. Loading never touches Slack:
a wrong value stops start-up with `ConfigError("recess.toml: services.web.local.listen:
expected HOST:PORT, got '8080'")`.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pendulum
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from platforms.environment import VARIABLE_NAME, never_passed

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FLAG_KEY = re.compile(r"^[a-z0-9._-]+$")
SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class ConfigError(Exception):
    """The configuration is wrong; the message names the file, the key and what was expected."""


# -- scalar types -------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|min|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> dt.timedelta:
    """'90s', '30m', '2h', '1h30m', '500ms' -> timedelta. Raises ValueError otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected a duration like '90s', '30m' or '2h', got {text!r}")
    s = text.strip().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"expected a duration like '90s', '30m' or '2h', got {text!r}")
    return dt.timedelta(seconds=total)


def format_duration(d: dt.timedelta) -> str:
    secs = d.total_seconds()
    if secs < 1:
        return f"{secs * 1000:.0f} ms"
    if secs < 60:
        return f"{secs:.1f} s" if secs < 10 else f"{secs:.0f} s"
    mins, s = divmod(int(round(secs)), 60)
    if mins < 60:
        return f"{mins} min {s} s" if s else f"{mins} min"
    h, m = divmod(mins, 60)
    return f"{h} h {m} min" if m else f"{h} h"


def _duration(v: Any) -> dt.timedelta:
    if isinstance(v, dt.timedelta):
        return v
    return parse_duration(v)


def _time_of_day(v: Any) -> dt.time:
    if isinstance(v, dt.time):
        return v
    if not isinstance(v, str) or not re.fullmatch(r"\d{2}:\d{2}", v):
        raise ValueError(f"expected a time of day as 'HH:MM', got {v!r}")
    h, m = int(v[:2]), int(v[3:])
    if h > 24 or m > 59 or (h == 24 and m):
        raise ValueError(f"expected a time of day as 'HH:MM', got {v!r}")
    return dt.time(23, 59, 59, 999999) if h == 24 else dt.time(h, m)


def _timezone(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected an IANA timezone like 'America/New_York', got {v!r}")
    try:
        pendulum.timezone(v)
    except Exception:
        raise ValueError(f"expected an IANA timezone like 'America/New_York', got {v!r}") from None
    return v


def _address(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9.\-]+:\d{1,5}", v):
        raise ValueError(f"expected HOST:PORT, got {v!r}")
    port = int(v.rsplit(":", 1)[1])
    if not 0 < port < 65536:
        raise ValueError(f"expected HOST:PORT with a port from 1 to 65535, got {v!r}")
    return v


def _instant(v: Any) -> dt.datetime:
    if isinstance(v, dt.datetime):
        parsed = v
    elif isinstance(v, str):
        try:
            parsed = dt.datetime.fromisoformat(v)
        except ValueError:
            raise ValueError(f"expected an ISO 8601 instant with offset, got {v!r}") from None
    else:
        raise ValueError(f"expected an ISO 8601 instant with offset, got {v!r}")
    if parsed.tzinfo is None:
        raise ValueError(f"expected an ISO 8601 instant with an offset (like -04:00), got {v!r}")
    return parsed.astimezone(dt.UTC)


def _slack_id(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[UWS][A-Z0-9]{2,}", v):
        raise ValueError(f"expected a Slack user ID (U...) or user-group ID (S...), got {v!r}")
    return v


Duration = Annotated[dt.timedelta, BeforeValidator(_duration)]
TimeOfDay = Annotated[dt.time, BeforeValidator(_time_of_day)]
Timezone = Annotated[str, BeforeValidator(_timezone)]
Address = Annotated[str, BeforeValidator(_address)]
Instant = Annotated[dt.datetime, BeforeValidator(_instant)]
SlackId = Annotated[str, AfterValidator(_slack_id)]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- sections -----------------------------------------------------------------------------------


class BotSection(Strict):
    database: str = "recess.db"
    channel: str = "C0DEPLOYS"
    state_dir: str = ".recess"
    # The address people reach recess at, for dashboard sign-in links; default: `recess serve`'s
    # own http://HOST:PORT.
    public_url: str | None = None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[^\s?#]*)?", v):
            raise ValueError(f"expected an http:// or https:// address like 'https://recess.example.org', got {v!r}")
        return v.rstrip("/")

    @field_validator("channel")
    @classmethod
    def _channel(cls, v: str) -> str:
        if not re.fullmatch(r"[CGD][A-Z0-9]{2,}", v):
            raise ValueError(f"expected a Slack channel ID like 'C0DEPLOYS', got {v!r}")
        return v


def _team_id(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"T[A-Z0-9]{2,}", v):
        raise ValueError(f"expected a Slack team ID like 'T0123ABCD', got {v!r}")
    return v


TeamId = Annotated[str, AfterValidator(_team_id)]


class AccessSection(Strict):
    deployers: list[SlackId] = []
    approvers: list[SlackId] = []
    flag_admins: list[SlackId] = []
    usergroup_cache: Duration = dt.timedelta(minutes=5)
    # Workspaces served besides the installed one (auth.test); empty: the installed one only.
    teams: list[TeamId] = []


class SchoolHours(Strict):
    days: list[Day] = list(DAYS[:5])
    start: TimeOfDay
    end: TimeOfDay

    @model_validator(mode="after")
    def _order(self) -> SchoolHours:
        if self.end <= self.start:
            raise ValueError(f"expected end after start, got start {self.start:%H:%M} and end {self.end:%H:%M}")
        return self


DEFAULT_SCHOOL_HOURS = (SchoolHours(start="08:00", end="15:00"),)


class WindowsSection(Strict):
    school_hours: list[SchoolHours] = list(DEFAULT_SCHOOL_HOURS)
    holidays: list[str] = []


class Tenant(Strict):
    id: str
    timezone: Timezone
    school_hours: list[SchoolHours] | None = None
    holidays: list[str] = []

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"expected a tenant ID of letters, digits, '.', '_' or '-', got {v!r}")
        return v


class Freeze(Strict):
    start: Instant
    end: Instant
    reason: str

    @model_validator(mode="after")
    def _order(self) -> Freeze:
        if self.end <= self.start:
            raise ValueError("expected end after start")
        return self


class Environment(Strict):
    approvals: int = Field(default=1, ge=0, le=10)
    respect_windows: bool = True
    keep_blue: Duration = dt.timedelta(minutes=30)
    rollback_by: Literal["deployers", "approvers"] = "deployers"
    bake_time: Duration = dt.timedelta(minutes=2)
    max_5xx_ratio: float = Field(default=0.05, ge=0, le=1)
    canary_pause: Duration = dt.timedelta(seconds=30)
    request_expiry: Duration = dt.timedelta(hours=24)
    deploy_timeout: Duration = dt.timedelta(minutes=30)

    @field_validator("deploy_timeout")
    @classmethod
    def _deploy_timeout(cls, v: dt.timedelta) -> dt.timedelta:
        if v.total_seconds() <= 0:
            raise ValueError("expected a duration above 0 (a deploy needs some time to run)")
        return v


class FlagsSection(Strict):
    api_keys: list[str] = []
    roles: list[str] = ["student", "teacher", "staff", "admin", "parent"]
    defaults: dict[str, bool] = {}

    @field_validator("defaults")
    @classmethod
    def _keys(cls, v: dict[str, bool]) -> dict[str, bool]:
        for key in v:
            if not FLAG_KEY.fullmatch(key):
                raise ValueError(f"expected flag keys of [a-z0-9._-], got {key!r}")
        return v


class DashboardSection(Strict):
    # Read-only pages open without signing in (flag toggles always need a session).
    public: bool = False
    # Sign-in links from `/deploy dashboard` work once, within `link_ttl`; sessions last `session_ttl`.
    link_ttl: Duration = dt.timedelta(minutes=10)
    session_ttl: Duration = dt.timedelta(hours=12)
    # How often App Home is checked for changes and republished to people who opened it within
    # `home_viewers` (0s: never republished).
    home_refresh: Duration = dt.timedelta(seconds=15)
    home_viewers: Duration = dt.timedelta(minutes=15)
    # The environment whose deploys the DORA numbers count; default: "production" when it exists,
    # else the first environment.
    dora_env: str | None = None

    @field_validator("link_ttl", "session_ttl")
    @classmethod
    def _positive(cls, v: dt.timedelta) -> dt.timedelta:
        if v.total_seconds() <= 0:
            raise ValueError("expected a duration above 0")
        return v


class MetricsSection(Strict):
    # The environment variable holding a bearer token for GET /metrics; unset: /metrics is open.
    token_env: str | None = None

    @field_validator("token_env")
    @classmethod
    def _variable(cls, v: str | None) -> str | None:
        if v is not None and not VARIABLE_NAME.fullmatch(v):
            raise ValueError(f"expected an environment variable name like 'RECESS_METRICS_TOKEN', got {v!r}")
        return v


class LocalPlatform(Strict):
    listen: Address
    slots: dict[Literal["blue", "green"], Address]
    run: str
    migrate: str | None = None

    @field_validator("slots")
    @classmethod
    def _both(cls, v: dict[str, str]) -> dict[str, str]:
        if set(v) != {"blue", "green"}:
            raise ValueError(f"expected both slots 'blue' and 'green', got {sorted(v)}")
        if v["blue"] == v["green"]:
            raise ValueError("expected two different addresses for blue and green")
        return v

    @field_validator("run")
    @classmethod
    def _run(cls, v: str) -> str:
        if "{port}" not in v:
            raise ValueError(f"expected a command containing '{{port}}', got {v!r}")
        return v


class CommandPlatform(Strict):
    start: str
    stop: str
    shift: str
    status: str
    health: str | None = None
    migrate: str | None = None


# An image name without tag or digest (the version becomes the tag), as Docker's reference grammar
# reads it: an optional registry host[:port], then lowercase path components.
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE_DOMAIN = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]))*(?::[0-9]+)?"
IMAGE_NAME = re.compile(rf"(?:{_IMAGE_DOMAIN}/)?{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*")
# What Docker accepts as a tag; a version must be one to run on the docker platform.
IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _image(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"expected an image name like 'ghcr.io/district/core', got {v!r}")
    last = v.rsplit("/", 1)[-1]
    if "@" in v or ":" in last:
        raise ValueError(f"expected an image name without a tag or digest (recess adds the version as the tag), got {v!r}")
    if len(v) > 255 or not IMAGE_NAME.fullmatch(v):
        raise ValueError(f"expected a valid image reference like 'ghcr.io/district/core' (lowercase; letters, digits, "
                         f"'.', '_', '-' and '/'), got {v!r}")
    return v


def _string_list(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"expected a list of strings like [\"--env-file\", \"core.env\"], got {v!r}")
    return v


StringList = Annotated[list[str], BeforeValidator(_string_list)]


class DockerBuild(Strict):
    context: str
    dockerfile: str = "Dockerfile"
    args: dict[str, str] = {}

    @field_validator("args")
    @classmethod
    def _args(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not VARIABLE_NAME.fullmatch(name):
                raise ValueError(f"expected build argument names of A-Z, a-z, 0-9 and '_', got {name!r}")
        return v


class DockerPlatform(Strict):
    image: Annotated[str, BeforeValidator(_image)]
    port: int
    listen: Address
    slots: dict[Literal["blue", "green"], Address]
    engine: Literal["docker", "podman"] = "docker"
    run_args: StringList = []
    migrate: StringList | None = None
    pull: bool = False
    build: DockerBuild | None = None
    # Overrides [services.NAME] keep_images for this service's images.
    keep_images: int | None = Field(default=None, ge=1, le=100)

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 65536:
            raise ValueError(f"expected the port the app listens on inside the container, from 1 to 65535, got {v!r}")
        return v

    @field_validator("slots")
    @classmethod
    def _both(cls, v: dict[str, str]) -> dict[str, str]:
        return LocalPlatform._both(v)

    @field_validator("migrate")
    @classmethod
    def _migrate(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("expected a command as a list of strings like [\"bin/rails\", \"db:migrate\"], got []")
        return v


def _railway_id(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}", v):
        raise ValueError(f"expected a Railway ID like '7c0e1f4e-...' (copy it from the service's settings), got {v!r}")
    return v


def _http_url(v: Any) -> str:
    if not isinstance(v, str) or not re.fullmatch(r"https?://[^\s/?#]+(?:/[^\s]*)?", v):
        raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
    return v.rstrip("/")


RailwayId = Annotated[str, BeforeValidator(_railway_id)]
HttpUrl = Annotated[str, BeforeValidator(_http_url)]
RAILWAY_API = "https://backboard.railway.com/graphql/v2"


class RailwayPlatform(Strict):
    """[services.NAME.railway]: the service on Railway that recess deploys through its GraphQL API."""

    project_id: RailwayId
    service_id: RailwayId
    environments: dict[str, RailwayId]  # recess environment -> Railway environment ID
    image: Annotated[str, BeforeValidator(_image)] | None = None  # deploys IMAGE:VERSION; else VERSION is a commit SHA
    public_url: HttpUrl
    token_env: str = "RAILWAY_TOKEN"
    token_kind: Literal["project", "account"] = "project"
    api_url: HttpUrl = RAILWAY_API
    # Run by Railway before the new deployment starts (its pre-deploy command), e.g. "bin/migrate".
    migrate: str | None = None
    # How often recess asks Railway about a deployment; never more often than every 2 s.
    poll_interval: Duration = dt.timedelta(seconds=2)
    # The longest recess waits out one rate limit (Retry-After) before the step fails.
    rate_limit_wait: Duration = dt.timedelta(minutes=5)

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, v: str) -> str:
        if not VARIABLE_NAME.fullmatch(v):
            raise ValueError(f"expected the name of an environment variable like 'RAILWAY_TOKEN', got {v!r}")
        return v

    @field_validator("environments")
    @classmethod
    def _some(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("expected a Railway environment ID for each recess environment, like "
                             "{ production = \"ENV-ID\" }")
        return v

    @field_validator("poll_interval")
    @classmethod
    def _poll(cls, v: dt.timedelta) -> dt.timedelta:
        if v.total_seconds() < 2:
            raise ValueError(f"expected 2s or more (Railway's API allows a few thousand requests an hour), "
                             f"got {format_duration(v)}")
        return v

    @field_validator("migrate")
    @classmethod
    def _migrate(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("expected a command like \"bin/migrate\", got an empty string")
        return v


class MigrationRunner(Strict):
    lock_timeout: Duration = dt.timedelta(seconds=5)
    statement_timeout: Duration = dt.timedelta(minutes=15)
    retries: int = Field(default=3, ge=1, le=10)
    retry_backoff: Duration = dt.timedelta(seconds=2)

    @field_validator("lock_timeout", "statement_timeout")
    @classmethod
    def _positive(cls, v: dt.timedelta) -> dt.timedelta:
        if v.total_seconds() <= 0:
            raise ValueError("expected a duration above 0 (0 would mean: wait forever)")
        return v


def _check_variable(name: str, key: str) -> None:
    if not VARIABLE_NAME.fullmatch(name):
        raise ValueError(f"expected environment variable names of A-Z, a-z, 0-9 and '_' (not starting with a digit), "
                         f"got {name!r}")
    refused = never_passed(name)
    if refused:
        raise ValueError(f"expected no Slack credential in {key}: {refused}")


class Service(Strict):
    platform: Literal["local", "command", "docker", "railway"]
    health_path: str = "/health"
    health_timeout: Duration = dt.timedelta(seconds=60)
    smoke: str | None = None
    smoke_timeout: Duration = dt.timedelta(minutes=5)
    migrations: str | None = None
    pg_version: int = Field(default=15, ge=9, le=30)
    migration: MigrationRunner = MigrationRunner()
    environments: list[str] | None = None
    local: LocalPlatform | None = None
    command: CommandPlatform | None = None
    docker: DockerPlatform | None = None
    railway: RailwayPlatform | None = None
    # A shell command that builds the version before start_green (platforms other than docker, which
    # builds from [services.NAME.docker] build), run in the config's folder with the RECESS_* values.
    build: str | None = None
    # Images of the service kept after a successful deploy (docker): older ones are removed.
    keep_images: int = Field(default=5, ge=1, le=100)
    # What the service's processes see beyond PATH, HOME, LANG, LC_*, TZ and RECESS_*
    # (platforms/environment.py): these names with these values, and these names copied from
    # recess's own environment.
    env: dict[str, str] = {}
    pass_env: list[str] = []
    # Values its processes must never see, set by Config from the rest of the file (the OFREP keys).
    _withheld: tuple[str, ...] = PrivateAttr(default=())

    @property
    def withheld(self) -> tuple[str, ...]:
        return self._withheld

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            _check_variable(name, "env")
            if name.startswith("RECESS_"):
                raise ValueError(f"expected names other than RECESS_* (recess sets those for each deploy), got {name!r}")
        return v

    @field_validator("pass_env")
    @classmethod
    def _pass_env(cls, v: list[str]) -> list[str]:
        for name in v:
            _check_variable(name, "pass_env")
        twice = sorted({n for n in v if v.count(n) > 1})
        if twice:
            raise ValueError(f"expected each name once, got {', '.join(twice)} twice")
        return v

    @field_validator("health_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"expected a path starting with '/', got {v!r}")
        return v

    @model_validator(mode="after")
    def _platform_table(self) -> Service:
        if self.platform == "local" and self.local is None:
            raise ValueError("platform 'local' needs a [services.NAME.local] table")
        if self.platform == "command" and self.command is None:
            raise ValueError("platform 'command' needs a [services.NAME.command] table")
        if self.platform == "docker" and self.docker is None:
            raise ValueError("platform 'docker' needs a [services.NAME.docker] table")
        if self.platform == "railway" and self.railway is None:
            raise ValueError("platform 'railway' needs a [services.NAME.railway] table with project_id, "
                             "service_id, environments and public_url")
        if self.platform == "docker" and self.build is not None:
            raise ValueError("build: expected no shell command on a docker service: it builds from "
                             "[services.NAME.docker] build = { context = ... }")
        return self


API_SCOPES = ("deploy", "rollback", "read")
WEBHOOK_EVENTS = ("deploy.requested", "deploy.approved", "deploy.started", "deploy.succeeded", "deploy.failed",
                  "deploy.rolled_back", "flag.changed")
TOKEN_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class ApiToken(Strict):
    """One `[[api.tokens]]` entry: who a REST API caller is (`name`) and what it may do."""

    name: str
    token_sha256: str
    scopes: list[Literal["deploy", "rollback", "read"]]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TOKEN_NAME.fullmatch(v):
            raise ValueError(f"expected a name of a-z, 0-9, '.', '_' or '-' (like 'github-actions'), got {v!r}")
        return v

    @field_validator("token_sha256")
    @classmethod
    def _digest(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("expected the token's SHA-256 as 64 lowercase hex digits (`recess api token NAME` "
                             "prints the line to paste), never the token itself")
        return v

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"expected at least one of {', '.join(API_SCOPES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"expected each scope once, got {v!r}")
        return v


class ApiSection(Strict):
    tokens: list[ApiToken] = []

    @model_validator(mode="after")
    def _unique(self) -> ApiSection:
        names = [t.name for t in self.tokens]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tokens: expected unique names, got {', '.join(dupes)} twice")
        digests = [t.token_sha256 for t in self.tokens]
        if len(set(digests)) != len(digests):
            raise ValueError("tokens: expected each token_sha256 once (two entries share a token)")
        return self


class Webhook(Strict):
    """One `[[webhooks]]` entry: where signed deploy and flag events are POSTed."""

    url: str
    events: list[Literal["deploy.requested", "deploy.approved", "deploy.started", "deploy.succeeded",
                         "deploy.failed", "deploy.rolled_back", "flag.changed"]]
    secret_env: str

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", v):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return v

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"expected at least one of {', '.join(WEBHOOK_EVENTS)}")
        return v

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, v: str) -> str:
        if not VARIABLE_NAME.fullmatch(v):
            raise ValueError(f"expected the name of the environment variable holding the secret, got {v!r}")
        return v


class Release(Strict):
    """`[releases.NAME]`: services deployed, switched and rolled back as one (docs/blue-green.md)."""

    # Each a [services.NAME]; the order is the start and switch order (rollback goes in reverse).
    services: list[str] = Field(min_length=2)
    # The member whose migrations run before any green starts.
    migrate_first: str | None = None

    @field_validator("services")
    @classmethod
    def _once(cls, v: list[str]) -> list[str]:
        twice = sorted({n for n in v if v.count(n) > 1})
        if twice:
            raise ValueError(f"expected each service once, got {', '.join(twice)} twice")
        return v

    @field_validator("migrate_first")
    @classmethod
    def _first(cls, v: str | None, info: ValidationInfo) -> str | None:
        services = info.data.get("services") or []
        if v is not None and v not in services:
            raise ValueError(f"expected one of the release's services ({', '.join(services)}), got {v!r}")
        return v


class Config(Strict):
    bot: BotSection = BotSection()
    access: AccessSection = AccessSection()
    windows: WindowsSection = WindowsSection()
    tenants: list[Tenant] = []
    freezes: list[Freeze] = []
    environments: dict[str, Environment] = {"production": Environment()}
    flags: FlagsSection = FlagsSection()
    services: dict[str, Service] = {}
    api: ApiSection = ApiSection()
    webhooks: list[Webhook] = []
    dashboard: DashboardSection = DashboardSection()
    metrics: MetricsSection = MetricsSection()
    releases: dict[str, Release] = {}

    # Set by load_config: the folder relative paths are resolved against, and the file's name.
    base_dir: Path = Path(".")
    source: str = "recess.toml"

    @model_validator(mode="after")
    def _cross(self) -> Config:
        if not self.environments:
            raise ValueError("expected at least one [environments.NAME] table")
        ids = [t.id for t in self.tenants]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"expected unique tenant IDs, got {', '.join(dupes)} twice")
        for name, svc in self.services.items():
            if not SERVICE_NAME.fullmatch(name):
                raise ValueError(f"services.{name}: expected a name of [a-z0-9_-]")
            for env in svc.environments or []:
                if env not in self.environments:
                    raise ValueError(
                        f"services.{name}.environments: {env!r} is not one of "
                        f"{', '.join(self.environments)}"
                    )
            if svc.railway is not None and svc.platform == "railway":
                for env in svc.environments or self.environments:
                    if env not in svc.railway.environments:
                        raise ValueError(f"services.{name}.railway.environments: no Railway environment ID for "
                                         f"{env!r} (add {env} = \"ENV-ID\", or list the service's environments)")
            for var, value in svc.env.items():
                if any(key and key in value for key in self.flags.api_keys):
                    raise ValueError(f"services.{name}.env.{var}: expected no OFREP key: its value holds one of "
                                     f"[flags] api_keys, and OFREP keys are never passed to a service's processes")
            svc._withheld = tuple(self.flags.api_keys)
        if self.dashboard.dora_env is not None and self.dashboard.dora_env not in self.environments:
            raise ValueError(f"dashboard.dora_env: {self.dashboard.dora_env!r} is not one of {', '.join(self.environments)}")
        for name, release in self.releases.items():
            if not SERVICE_NAME.fullmatch(name):
                raise ValueError(f"releases.{name}: expected a name of [a-z0-9_-]")
            if name in self.services:
                raise ValueError(f"releases.{name}: expected a name no service has: /deploy {name} would not say "
                                 f"whether it means the release or [services.{name}]")
            unknown = [s for s in release.services if s not in self.services]
            if unknown:
                raise ValueError(f"releases.{name}.services: {', '.join(repr(s) for s in unknown)} "
                                 f"{'is not a' if len(unknown) == 1 else 'are not'} [services.NAME] "
                                 f"(known: {', '.join(sorted(self.services)) or 'none'})")
            handed = [s for s in release.services if self.services[s].platform == "railway"]
            if handed:
                raise ValueError(f"releases.{name}.services: {', '.join(handed)} runs on Railway, which moves "
                                 f"traffic itself after its own healthcheck: recess cannot switch it together "
                                 f"with the other members; deploy it on its own")
        return self

    # -- derived values --------------------------------------------------------------------------

    @property
    def default_environment(self) -> str:
        return next(iter(self.environments))

    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.base_dir / p

    @property
    def database_path(self) -> Path:
        return self.path(self.bot.database)

    @property
    def state_dir(self) -> Path:
        return self.path(self.bot.state_dir)

    @property
    def dora_environment(self) -> str:
        if self.dashboard.dora_env:
            return self.dashboard.dora_env
        return "production" if "production" in self.environments else self.default_environment

    def service_environments(self, service: str) -> list[str]:
        svc = self.services[service]
        return list(svc.environments or self.environments)

    def releases_with(self, service: str) -> list[str]:
        """The releases that have `service` as a member."""
        return [name for name, r in self.releases.items() if service in r.services]


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "function-" in str(part):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _message(err: dict[str, Any]) -> str:
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    kind = err["type"]
    given = err.get("input")
    if kind == "extra_forbidden":
        return "unknown key (see docs/configuration.md for the keys recess reads)"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"{msg[0].lower()}{msg[1:]}, got {given!r}"
    if "expected" in msg:
        return msg
    return f"{msg[0].lower()}{msg[1:]}, got {given!r}"


def parse_config(data: dict[str, Any], *, source: str = "recess.toml", base_dir: Path = Path(".")) -> Config:
    for name in ("base_dir", "source"):
        if name in data:
            raise ConfigError(f"{source}: {name}: unknown key (see docs/configuration.md)")
    try:
        cfg = Config.model_validate({**data, "base_dir": base_dir, "source": source})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = _location(err["loc"])
            lines.append(f"{source}: {where + ': ' if where else ''}{_message(err)}")
        raise ConfigError("\n".join(lines)) from None
    return cfg


def load_config(path: str | Path) -> Config:
    """Reads and validates a recess.toml; raises ConfigError naming the file and the key."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such configuration file (set RECESS_CONFIG or pass --config)") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    cfg = parse_config(data, source=str(p), base_dir=p.resolve().parent)
    _check_files(cfg)
    return cfg


def _check_files(cfg: Config) -> None:
    for name, svc in cfg.services.items():
        build = svc.docker.build if svc.docker else None
        if build is None:
            continue
        if not cfg.path(build.context).is_dir():
            raise ConfigError(f"{cfg.source}: services.{name}.docker.build.context: no such folder {build.context!r} "
                              f"(relative to the config's folder)")
        dockerfile = cfg.path(build.context) / build.dockerfile
        if not dockerfile.is_file():
            raise ConfigError(f"{cfg.source}: services.{name}.docker.build.dockerfile: no such file {build.dockerfile!r} "
                              f"in {build.context!r}")
    for i, f in enumerate(cfg.windows.holidays):
        if not cfg.path(f).is_file():
            raise ConfigError(f"{cfg.source}: windows.holidays[{i}]: no such iCalendar file {f!r} (relative to the config's folder)")
    for t_i, t in enumerate(cfg.tenants):
        for i, f in enumerate(t.holidays):
            if not cfg.path(f).is_file():
                raise ConfigError(f"{cfg.source}: tenants[{t_i}].holidays[{i}]: no such iCalendar file {f!r} (relative to the config's folder)")
