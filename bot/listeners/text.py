"""Reading slash-command text the way people type it: quotes group words (Slack's smart quotes
too), and IDs are whole numbers of ASCII digits in SQLite's range."""

from __future__ import annotations

import re
import shlex

MAX_ID = 2**63 - 1  # SQLite's largest INTEGER: a bigger "ID" names nothing and must not reach a query
_ID = re.compile(r"#?([0-9]{1,19})")  # ASCII digits only: str.isdigit() also accepts "٣" and "³"


class ParseError(ValueError):
    """The command text is malformed; the message says what was wrong."""


def split_args(text: str) -> list[str]:
    text = (text or "").replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'").replace("\u2019", "'")
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise ParseError(f"could not read the command ({exc}); check your quotes") from None


def parse_id(text: str, what: str) -> int:
    """`3` or `#3` -> 3: ASCII digits from 1 to 2**63 - 1, else ParseError naming `what`.

    For IDs typed in commands and carried in button values alike:
    `parse_id(action["value"], "deploy")`.
    """
    match = _ID.fullmatch(text or "")
    number = int(match.group(1)) if match else 0
    if not 1 <= number <= MAX_ID:
        shown = (text or "")[:40]
        raise ParseError(f"`{shown}` is not a {what} ID: IDs are whole numbers from 1 up")
    return number
