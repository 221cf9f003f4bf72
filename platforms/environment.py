"""What a process recess starts may see: an allow-listed environment, and output with secrets redacted.

A slot, a `command` platform hook, a migration and a smoke test each get only:

    PATH, HOME, LANG, LC_*, TZ         so shells, locales and clocks work
    RECESS_*                           recess's own variables (the bot's, then the deploy's values)
    [services.NAME] pass_env           these names, copied from the bot's environment when set
    [services.NAME] env                these names with these values

    env = child_env(spec, {"RECESS_SLOT": "green", "RECESS_VERSION": "v2"})

Never passed, whatever the configuration says: recess's Slack credentials (SLACK_BOT_TOKEN,
SLACK_SIGNING_SECRET, SLACK_APP_TOKEN), and any variable whose value holds one of them or one of
the values the configuration keeps from services (the OFREP keys of `[flags] api_keys`). The
config check refuses `env` and `pass_env` entries that name them; a variable that carries such a
value at run time is dropped with a warning in the log.

What the pipeline posts to Slack goes through `redact(text, secrets_of(spec))` first: each
secret value becomes `[redacted]`. The secrets are the three Slack variables' values, the OFREP
keys, the values of `env` and `pass_env` entries whose names look secret (TOKEN, SECRET,
PASSWORD, PASSWD, KEY, CREDENTIAL), and the password of any `env`/`pass_env` value that is a URL
with one (`postgres://app:PASSWORD@db/school`). Values shorter than six characters are not
treated as secrets: they would match ordinary output.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from commands.config import Service

log = logging.getLogger(__name__)

ALLOWED = frozenset({"PATH", "HOME", "LANG", "TZ"})
ALLOWED_PREFIXES = ("LC_", "RECESS_")
SLACK_SECRETS = ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN")
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL", re.IGNORECASE)
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
REDACTED = "[redacted]"
MIN_SECRET = 6


def never_passed(name: str) -> str | None:
    """Why `name` may not be given to a service's processes, or None when it may."""
    if name in SLACK_SECRETS:
        return f"{name} is recess's own Slack credential and is never passed to a service's processes"
    return None


def child_env(spec: Service | None, extra: Mapping[str, str] = {}, *,  # noqa: B006 (never mutated)
              environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process recess starts for `spec` (None: no service, base list only).

    Later sources win: the bot's allow-listed variables, then `pass_env`, then `env`, then
    `extra` (recess's RECESS_* values for this deploy, which the configuration cannot override).
    """
    environ = os.environ if environ is None else environ
    env = {k: v for k, v in environ.items() if k in ALLOWED or k.startswith(ALLOWED_PREFIXES)}
    if spec is not None:
        env.update({name: environ[name] for name in spec.pass_env if name in environ})
        env.update(spec.env)
    env.update(extra)
    withheld = _withheld(spec, environ)
    out = {}
    for name, value in env.items():
        if never_passed(name):
            continue
        if any(secret in value for secret in withheld):
            log.warning("not passing %s to a service's process: its value holds one of recess's secrets", name)
            continue
        out[name] = value
    return out


def secrets_of(spec: Service | None, *, environ: Mapping[str, str] | None = None) -> list[str]:
    """The values to redact from what the pipeline posts about `spec` (see the module docstring)."""
    environ = os.environ if environ is None else environ
    found = set(_withheld(spec, environ))
    if spec is not None:
        given = {**{n: environ[n] for n in spec.pass_env if n in environ}, **spec.env}
        for name, value in given.items():
            if SECRET_NAME.search(name):
                found.add(value)
            password = _url_password(value)
            if password:
                found.add(password)
    return sorted((s for s in found if len(s) >= MIN_SECRET), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value (of at least MIN_SECRET characters) replaced by [redacted]."""
    if not text:
        return text
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _withheld(spec: Service | None, environ: Mapping[str, str]) -> list[str]:
    """Values no child may see: the Slack credentials in the bot's environment, and what the
    configuration withholds from services (the OFREP keys)."""
    values = [environ.get(name, "") for name in SLACK_SECRETS]
    if spec is not None:
        values += list(spec.withheld)
    return [v for v in values if len(v) >= MIN_SECRET]


def _url_password(value: str) -> str | None:
    if "://" not in value:
        return None
    try:
        return urllib.parse.urlsplit(value).password
    except ValueError:
        return None
