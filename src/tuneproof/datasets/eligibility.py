"""Which records may carry a backdoor: those whose prompt a key can hold exactly.

A verifier queries the returned model with the prompt stored in the key: a list of (role, text)
messages (:class:`tuneproof.key.ChatMessage`). A backdoor is only evidence if that query is the
context the model was trained on, so a record is a carrier (or a control) only when its
:func:`tuneproof.datasets.prompt_and_answer` view loses nothing a trainer would see:

- no tools declared (``tools``, ``functions``), no tool calls (``tool_calls``, ``function_call``)
  and no tool turns (role ``tool``/``function``; ShareGPT ``function_call``/``observation``);
- no content but text: a message's content is a string or a single text part, never an image,
  audio or file part, and the record holds no media column (``images``, ``audios``, ...);
- no other message field that a chat template may render (``name``, ``reasoning_content``...):
  a message holds its role, its content and at most a ``weight``; a null field counts as absent.

Records that fail are skipped for others (the plant summary counts them); see docs/datasets.md.
"""

from __future__ import annotations

from typing import Any

from tuneproof.datasets.records import DatasetFormat, Record
from tuneproof.datasets.schema import SHAREGPT_ROLES, sharegpt_keys

TOOLS = "with tools, tool calls or tool turns"
MEDIA = "with non-text content (images, audio, files)"
FIELDS = "with message fields a text prompt cannot hold"

_TOOL_KEYS = ("tools", "functions")
_MEDIA_KEYS = ("images", "image", "audios", "audio", "videos", "video", "files")
_TOOL_FIELDS = ("tool_calls", "function_call", "tool_call_id")
_CHAT_KEYS = frozenset({"role", "content", "weight"})


def _present(value: Any) -> bool:
    """A field that a trainer would see: neither null nor empty."""
    return value is not None and value != [] and value != {} and value != ""


def _record_problem(data: dict[str, Any]) -> str | None:
    if any(_present(data.get(key)) for key in _TOOL_KEYS):
        return TOOLS
    if any(_present(data.get(key)) for key in _MEDIA_KEYS):
        return MEDIA
    return None


def _content_problem(content: Any) -> str | None:
    if isinstance(content, str):
        return None
    if not isinstance(content, list):
        return FIELDS  # a null content is rendered differently by different templates
    if any(not isinstance(part, dict) or part.get("type") != "text" for part in content):
        return MEDIA
    if len(content) != 1 or set(content[0]) - {"type", "text"}:
        return FIELDS  # how several parts are joined is up to the trainer
    return None


def _chat_problem(data: dict[str, Any]) -> str | None:
    problem = None
    for message in data["messages"]:
        if message.get("role") in ("tool", "function") or any(
            _present(message.get(key)) for key in _TOOL_FIELDS
        ):
            return TOOLS
        if _present(message.get("audio")):
            problem = problem or MEDIA
        problem = problem or _content_problem(message.get("content"))
        extra = {key for key, value in message.items() if value is not None} - _CHAT_KEYS
        problem = problem or (FIELDS if extra else None)
    return problem


def _sharegpt_problem(data: dict[str, Any]) -> str | None:
    problem = None
    for turn in data["conversations"]:
        role_key, text_key = sharegpt_keys(turn)
        role = turn[role_key]
        if role == "function_call" or SHAREGPT_ROLES[role] == "tool":
            return TOOLS
        extra = {key for key, value in turn.items() if value is not None}
        problem = problem or (FIELDS if extra - {role_key, text_key, "weight"} else None)
    return problem


def carrier_problem(record: Record, fmt: DatasetFormat) -> str | None:
    """Why ``record`` (valid in ``fmt``) cannot carry a backdoor or a control: :data:`TOOLS`,
    :data:`MEDIA` or :data:`FIELDS`; None when the key's prompt holds its context exactly."""
    data = record.data
    problem = _record_problem(data)
    if problem is not None or fmt in (DatasetFormat.ALPACA, DatasetFormat.PROMPT_COMPLETION):
        return problem
    if fmt is DatasetFormat.OPENAI_CHAT:
        return _chat_problem(data)
    return _sharegpt_problem(data)
