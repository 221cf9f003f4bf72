"""Block Kit helpers shared by every view: built with slack_sdk's models so Slack's limits are
checked before anything is sent."""

from __future__ import annotations

from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)

MAX_BLOCKS = 50
SECTION_LIMIT = 3000


def trim(text: str, limit: int = SECTION_LIMIT) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 20] + "\n… (trimmed)"


def section(text: str) -> SectionBlock:
    return SectionBlock(text=MarkdownTextObject(text=trim(text)))


def context(*texts: str) -> ContextBlock:
    return ContextBlock(elements=[MarkdownTextObject(text=trim(t, 2000)) for t in texts if t][:10])


def header(text: str) -> HeaderBlock:
    return HeaderBlock(text=text[:150])


def divider() -> DividerBlock:
    return DividerBlock()


def button(text: str, action_id: str, value: str, *, style: str | None = None, confirm: ConfirmObject | None = None) -> ButtonElement:
    return ButtonElement(text=text, action_id=action_id, value=value, style=style, confirm=confirm)


def actions(block_id: str | None, *buttons: ButtonElement) -> ActionsBlock:
    return ActionsBlock(block_id=block_id, elements=list(buttons))


def confirm(title: str, text: str, yes: str, no: str = "Cancel", style: str | None = None) -> ConfirmObject:
    return ConfirmObject(title=title, text=text, confirm=yes, deny=no, style=style)


def render(blocks: list[Block]) -> list[dict[str, Any]]:
    """to_dict() validates each block (SlackObjectFormationError on a limit); we also cap the count."""
    if len(blocks) > MAX_BLOCKS:
        blocks = [*blocks[: MAX_BLOCKS - 1], context(f"… {len(blocks) - MAX_BLOCKS + 1} more blocks not shown")]
    return [b.to_dict() for b in blocks]


def usage_reply(problem: str, usage: str) -> dict[str, Any]:
    """The ephemeral answer to bad input: what was wrong, then the usage."""
    text = trim(f":warning: {problem}", 2000)  # the problem may quote what the user typed
    return {
        "response_type": "ephemeral",
        "text": text,
        "blocks": render([section(text), context(f"Usage:\n```{usage}```")]),
    }


def ephemeral(text: str, blocks: list[Block] | None = None) -> dict[str, Any]:
    return {"response_type": "ephemeral", "text": text, "blocks": render(blocks or [section(text)])}


def escape_mrkdwn(text: str | None) -> str:
    """User-typed text made inert in mrkdwn, as Slack specifies: `&`, `<` and `>` escaped, so a
    typed `<!channel>` or `<https://evil.example|recess>` shows as typed instead of pinging everyone
    or disguising a link."""
    return (text or "").replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
