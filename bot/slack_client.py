"""The Slack Web API client recess uses: base URL from SLACK_API_URL, retries for 429 and 5xx."""

from __future__ import annotations

import os

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

DEFAULT_API_URL = "https://slack.com/api/"


def make_client(token: str | None = None, base_url: str | None = None, *, timeout: int = 10, retries: bool = True) -> WebClient:
    """With `retries=False`: one quick try, for look-ups made before a listener acks."""
    base = base_url or os.environ.get("SLACK_API_URL") or DEFAULT_API_URL
    if not base.endswith("/"):
        base += "/"
    return WebClient(
        token=token if token is not None else os.environ.get("SLACK_BOT_TOKEN", ""),
        base_url=base,
        timeout=timeout,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=3),
            ServerErrorRetryHandler(max_retry_count=2),
        ] if retries else [],
    )
