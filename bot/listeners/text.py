"""Splitting slash-command text the way people type it: quotes group words, Slack's smart quotes too."""

from __future__ import annotations

import shlex


class ParseError(ValueError):
    """The command text is malformed; the message says what was wrong."""


def split_args(text: str) -> list[str]:
    text = (text or "").replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ParseError(f"could not read the command ({exc}); check your quotes") from None
