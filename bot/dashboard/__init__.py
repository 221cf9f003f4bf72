"""The web dashboard: server-rendered pages under /dashboard, on `recess serve`'s own port.

Sign-in has no passwords: `/deploy dashboard` (or App Home's button) gives a one-time link
(commands/dashboard.py); opening it sets a session cookie naming the Slack user, and the same
Policy as in Slack decides what they may do. Every form that changes something carries the
session's CSRF token. docs/dashboard.md describes the pages.
"""

from bot.dashboard.web import routes, signin_url

__all__ = ["routes", "signin_url"]
