"""Who may do what: the one place recess decides deployers, approvers, flag admins and rollbacks.

REST API callers are actors too: `api:NAME` for the `[[api.tokens]]` entry NAME. A token may do
what its scopes say (request deploys, roll back) and nothing a person does: it never approves,
rejects or freezes, and it cancels only the deploys it requested itself.

Lists hold Slack user IDs (U.../W...) and user-group IDs (S...). Groups are resolved through an
injected `members_of(group_id)` (the bot passes Slack's usergroups.users.list), cached, and a
group that cannot be resolved grants nothing: errors fail closed.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from commands.config import ApiToken, Config

TOKEN_ACTOR = "api:"  # the actor prefix of a REST API token, e.g. `api:github-actions`


def token_actor(name: str) -> str:
    return f"{TOKEN_ACTOR}{name}"


def is_token_actor(actor: str | None) -> bool:
    return bool(actor) and actor.startswith(TOKEN_ACTOR)

MembersOf = Callable[[str], Iterable[str]]


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


class Policy:
    def __init__(
        self,
        cfg: Config,
        members_of: MembersOf | None = None,
        *,
        cache_seconds: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._members_of = members_of
        self._ttl = cfg.access.usergroup_cache.total_seconds() if cache_seconds is None else cache_seconds
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    # -- the lists ----------------------------------------------------------------------------

    def _group_members(self, group: str) -> frozenset[str]:
        now = self._monotonic()
        with self._lock:
            hit = self._cache.get(group)
            if hit and now - hit[0] < self._ttl:
                return hit[1]
        if self._members_of is None:
            return frozenset()
        try:
            members = frozenset(self._members_of(group))
        except Exception:
            return frozenset()  # fail closed, and do not cache the failure
        with self._lock:
            self._cache[group] = (now, members)
        return members

    def in_list(self, user: str, ids: Iterable[str]) -> bool:
        for entry in ids:
            if entry == user:
                return True
            if entry.startswith("S") and user in self._group_members(entry):
                return True
        return False

    # -- API tokens -----------------------------------------------------------------------------

    def token_for(self, presented: str) -> ApiToken | None:
        """The `[[api.tokens]]` entry whose token_sha256 is this token's digest; None if none is.
        Every entry is compared in constant time, so timing says nothing about which one is close."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).hexdigest()
        found = None
        for entry in self.cfg.api.tokens:
            if hmac.compare_digest(entry.token_sha256, digest):
                found = entry
        return found

    def token_named(self, actor: str) -> ApiToken | None:
        if not is_token_actor(actor):
            return None
        name = actor[len(TOKEN_ACTOR):]
        return next((t for t in self.cfg.api.tokens if t.name == name), None)

    def token_may(self, actor: str, scope: str) -> bool:
        token = self.token_named(actor)
        return token is not None and scope in token.scopes

    # -- decisions ----------------------------------------------------------------------------

    def can_deploy(self, user: str) -> Decision:
        if is_token_actor(user):
            if self.token_may(user, "deploy"):
                return Decision(True)
            return Decision(False, "this API token has no `deploy` scope")
        ids = self.cfg.access.deployers
        if not ids or self.in_list(user, ids) or self.is_approver(user):
            return Decision(True)
        return Decision(False, "you are not in [access] deployers, so you cannot request deploys")

    def is_approver(self, user: str) -> bool:
        if is_token_actor(user):
            return False  # a token never approves: approvals come from people in Slack
        return self.in_list(user, self.cfg.access.approvers)

    def can_approve(self, user: str, requester: str) -> Decision:
        if user == requester and not self.is_approver(user):
            return Decision(False, "approvers ([access] approvers) approve deploys, and you are not one; "
                                   "ask one of them to approve the deploy you requested")
        if user == requester:
            return Decision(False, "you requested this deploy; another approver must approve it")
        if not self.is_approver(user):
            return Decision(False, "only approvers ([access] approvers) can approve deploys")
        return Decision(True)

    def can_reject(self, user: str, requester: str) -> Decision:
        if user == requester or self.is_approver(user):
            return Decision(True)
        return Decision(False, "only approvers or the requester can reject a deploy")

    def can_cancel(self, user: str, requester: str) -> Decision:
        if user == requester or self.is_approver(user):
            return Decision(True)
        return Decision(False, "only the requester or an approver can cancel this deploy")

    def can_freeze(self, user: str) -> Decision:
        if self.is_approver(user):
            return Decision(True)
        return Decision(False, "only approvers ([access] approvers) can add or lift freezes")

    def can_change_flags(self, user: str) -> Decision:
        admins = self.cfg.access.flag_admins or self.cfg.access.approvers
        if self.in_list(user, admins):
            return Decision(True)
        return Decision(False, "only flag admins ([access] flag_admins, or approvers when empty) can change flags")

    def can_rollback(self, user: str, env: str) -> Decision:
        if is_token_actor(user):
            if self.token_may(user, "rollback"):
                return Decision(True)
            return Decision(False, "this API token has no `rollback` scope")
        who = self.cfg.environments[env].rollback_by
        if self.is_approver(user):
            return Decision(True)
        if who == "deployers" and self.can_deploy(user):
            return Decision(True)
        return Decision(False, f"only {who} can roll back {env}")
