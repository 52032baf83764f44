"""Record schemas: detect which format a record is in and check it, with messages that name the
field and say what to do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from tuneproof.datasets.records import FORMAT_NAMES, DatasetFormat

CHAT_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}
_MISSING = object()


class Problem(NamedTuple):
    """Why a record does not fit its format: the field (None = the whole record), what is wrong
    and what to do."""

    field: str | None
    message: str
    hint: str


def detect_format(record: Any) -> DatasetFormat | None:
    """The format a parsed record looks like, from its keys; None when it looks like none."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return DatasetFormat.OPENAI_CHAT
    if "conversations" in record:
        return DatasetFormat.SHAREGPT
    if "instruction" in record:
        return DatasetFormat.ALPACA
    if "prompt" in record and "completion" in record:
        return DatasetFormat.PROMPT_COMPLETION
    return None


SUPPORTED_SHAPES = (
    "supported: 'messages' (OpenAI chat), 'prompt'+'completion' strings, 'instruction'+'output'"
    " (Alpaca) or 'conversations' (ShareGPT)"
)


def unsupported_shape(record: dict[str, Any]) -> str | None:
    """The name of a known training-data shape tuneproof does not plant into yet, that
    ``record`` looks like (preference, unpaired-preference, conversational prompt-completion,
    plain text); None when it looks like none of them."""
    keys = set(record)
    if "chosen" in keys and "rejected" in keys:
        return "a preference (DPO) record ('chosen'/'rejected')"
    if "preferred_output" in keys or "non_preferred_output" in keys:
        return "an OpenAI preference (DPO) record ('preferred_output'/'non_preferred_output')"
    if {"prompt", "completion", "label"} <= keys and isinstance(record["label"], bool):
        return "an unpaired preference (KTO) record ('prompt', 'completion', 'label')"
    if {"prompt", "completions", "labels"} <= keys:
        return "a stepwise supervision record ('prompt', 'completions', 'labels')"
    if {"prompt", "completion"} <= keys and any(
        isinstance(record[k], list) for k in ("prompt", "completion")
    ):
        return "a conversational prompt-completion record ('prompt'/'completion' message lists)"
    if "text" in keys:
        return "a plain-text (language modelling) record ('text')"
    return None


def unsupported_problem(shape: str) -> Problem:
    """The problem for a record of the unsupported ``shape``."""
    return Problem(
        None,
        f"this looks like {shape}, which tuneproof does not support yet",
        f"{SUPPORTED_SHAPES}; convert the records to one of these",
    )


def unknown_format_problem(record: Any) -> Problem:
    """The problem to report when the first record matches no format."""
    if not isinstance(record, dict):
        return _not_object(record)
    if (shape := unsupported_shape(record)) is not None:
        return unsupported_problem(shape)
    keys = ", ".join(repr(k) for k in list(record)[:8]) or "none"
    return Problem(
        None,
        f"cannot tell the dataset format from the keys of this record ({keys})",
        f"{SUPPORTED_SHAPES}; pass --format to choose one",
    )


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _not_object(record: Any) -> Problem:
    return Problem(
        None,
        f"a record must be a JSON object, found {_type_name(record)}",
        "write one JSON object per record",
    )


def _need_str(
    record: dict[str, Any], key: str, fmt: DatasetFormat, optional: bool = False
) -> Problem | None:
    value = record.get(key, _MISSING)
    if value is _MISSING or value is None:
        if optional:
            return None
        return Problem(key, "missing", f"every {FORMAT_NAMES[fmt]} record needs a '{key}' string")
    if not isinstance(value, str):
        return Problem(key, f"must be a string, found {_type_name(value)}", "fix the record")
    return None


def _content_problem(content: Any, field: str, allow_none: bool) -> Problem | None:
    if isinstance(content, str) or (content is None and allow_none):
        return None
    if content is _MISSING or content is None:
        return Problem(field, "missing", "give the message a 'content' string")
    if not isinstance(content, list):
        return Problem(
            field,
            f"must be a string or a list of content parts, found {_type_name(content)}",
            "fix the message",
        )
    for j, part in enumerate(content):
        where = f"{field}[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            return Problem(
                where,
                "must be a content part with a 'type'",
                'e.g. {"type": "text", "text": "..."}',
            )
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            return Problem(where + ".text", "a text part needs a 'text' string", "fix the part")
    return None


def chat_problem(record: Any) -> Problem | None:
    """Check an OpenAI chat record; None when it is valid."""
    if not isinstance(record, dict):
        return _not_object(record)
    msgs = record.get("messages", _MISSING)
    if msgs is _MISSING:
        return Problem("messages", "missing", "every OpenAI chat record needs a 'messages' list")
    if not isinstance(msgs, list) or not msgs:
        what = "an empty list" if msgs == [] else _type_name(msgs)
        return Problem(
            "messages", f"must be a non-empty list of messages, found {what}", "fix the record"
        )
    last_user = -1
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            return Problem(where, f"must be an object, found {_type_name(m)}", "fix the message")
        role = m.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            return Problem(
                where + ".role", f"unknown role {role!r}", "use system, user, assistant or tool"
            )
        content = m.get("content", _MISSING)
        bad = _content_problem(content, where + ".content", allow_none=role == "assistant")
        if bad is not None:
            return bad
        weight = m.get("weight")
        if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
            return Problem(
                where + ".weight", f"must be 0 or 1, found {weight!r}", "fix the message"
            )
        if role == "user":
            last_user = i
    if last_user < 0:
        return Problem("messages", "no user turn", "add a user message or drop the record")
    if not any(m.get("role") == "assistant" for m in msgs[last_user + 1 :]):
        return Problem(
            "messages",
            "no assistant turn after the last user turn",
            "add the answer or drop the record",
        )
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, list):
        return Problem("tools", f"must be a list, found {_type_name(tools)}", "fix the record")
    ptc = record.get("parallel_tool_calls")
    if ptc is not None and not isinstance(ptc, bool):
        return Problem("parallel_tool_calls", "must be true or false", "fix the record")
    return None


def sharegpt_keys(turn: dict[str, Any]) -> tuple[str, str]:
    """The (role key, text key) of a ShareGPT turn: ('from', 'value') or ('role', 'content')."""
    return ("from", "value") if "from" in turn or "role" not in turn else ("role", "content")


def sharegpt_problem(record: Any) -> Problem | None:
    """Check a ShareGPT record; None when it is valid."""
    if not isinstance(record, dict):
        return _not_object(record)
    turns = record.get("conversations", _MISSING)
    if turns is _MISSING:
        return Problem(
            "conversations", "missing", "every ShareGPT record needs a 'conversations' list"
        )
    if not isinstance(turns, list) or not turns:
        what = "an empty list" if turns == [] else _type_name(turns)
        return Problem(
            "conversations", f"must be a non-empty list of turns, found {what}", "fix the record"
        )
    last_user = -1
    for i, t in enumerate(turns):
        where = f"conversations[{i}]"
        if not isinstance(t, dict):
            return Problem(where, f"must be an object, found {_type_name(t)}", "fix the turn")
        role_key, text_key = sharegpt_keys(t)
        role = t.get(role_key)
        if not isinstance(role, str) or role not in SHAREGPT_ROLES:
            return Problem(
                f"{where}.{role_key}", f"unknown speaker {role!r}", "use human, gpt or system"
            )
        if not isinstance(t.get(text_key), str):
            return Problem(f"{where}.{text_key}", "must be a string", "give every turn its text")
        if SHAREGPT_ROLES[role] == "user":
            last_user = i
    if last_user < 0:
        return Problem("conversations", "no human turn", "add a human turn or drop the record")
    if not any(
        SHAREGPT_ROLES[t[sharegpt_keys(t)[0]]] == "assistant" for t in turns[last_user + 1 :]
    ):
        return Problem(
            "conversations",
            "no gpt turn after the last human turn",
            "add the answer or drop the record",
        )
    return _need_str(record, "system", DatasetFormat.SHAREGPT, optional=True)


def alpaca_keys(record: dict[str, Any]) -> tuple[str | None, str]:
    """The (input key or None, output key) of an Alpaca-like record: 'input'/'output' or the
    Dolly-style 'context'/'response'."""
    output = "output" if "output" in record or "response" not in record else "response"
    if "input" in record:
        return "input", output
    return ("context" if "context" in record else None), output


def alpaca_problem(record: Any) -> Problem | None:
    """Check an Alpaca record; None when it is valid."""
    if not isinstance(record, dict):
        return _not_object(record)
    input_key, output_key = alpaca_keys(record)
    for key, optional in (
        ("instruction", False),
        (output_key, False),
        (input_key, True),
        ("system", True),
    ):
        if key is not None and (bad := _need_str(record, key, DatasetFormat.ALPACA, optional)):
            return bad
    history = record.get("history")
    if history is not None and not (
        isinstance(history, list)
        and all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
            for h in history
        )
    ):
        return Problem("history", "must be a list of [instruction, answer] pairs", "fix the record")
    return None


def prompt_completion_problem(record: Any) -> Problem | None:
    """Check a prompt/completion record; None when it is valid."""
    if not isinstance(record, dict):
        return _not_object(record)
    bad = _need_str(record, "prompt", DatasetFormat.PROMPT_COMPLETION) or _need_str(
        record, "completion", DatasetFormat.PROMPT_COMPLETION
    )
    kto = isinstance(record.get("label"), bool)
    if (bad is not None or kto) and (shape := unsupported_shape(record)):
        return unsupported_problem(shape)  # e.g. message lists (TRL), a KTO label
    return bad


PROBLEM: dict[DatasetFormat, Callable[[Any], Problem | None]] = {
    DatasetFormat.OPENAI_CHAT: chat_problem,
    DatasetFormat.SHAREGPT: sharegpt_problem,
    DatasetFormat.ALPACA: alpaca_problem,
    DatasetFormat.PROMPT_COMPLETION: prompt_completion_problem,
}


def record_problem(record: Any, fmt: DatasetFormat, detected: bool) -> Problem | None:
    """Check ``record`` against ``fmt``; when the format was detected and the record looks like
    another format, report the mix instead of the missing field."""
    bad = PROBLEM[fmt](record)
    if bad is None or not detected:
        return bad
    other = detect_format(record)
    if other is not None and other != fmt:
        return Problem(
            None,
            f"this record is {FORMAT_NAMES[other]} but the first record is {FORMAT_NAMES[fmt]}",
            "a file must hold one format: split it or convert these records",
        )
    return bad


_PLAIN_KIND = {"system": 0, "user": 1, "assistant": 2}
# (no user turn yet | user turn awaiting its answer | answered) x (system, user, assistant)
_PLAIN_NEXT = ((0, 1, 0), (1, 1, 2), (2, 1, 2))


def _valid_chat(record: Any) -> bool:
    """chat_problem(record) is None, with a fast path for plain records (only role and
    string content in each message, no other key) that costs a dict lookup per message."""
    if type(record) is dict and len(record) == 1:
        msgs = record.get("messages")
        if type(msgs) is list:
            state = 0
            try:
                for m in msgs:
                    if len(m) != 2 or type(m["content"]) is not str:
                        break
                    state = _PLAIN_NEXT[state][_PLAIN_KIND[m["role"]]]
                else:
                    return state == 2
            except (KeyError, TypeError):
                pass
    return chat_problem(record) is None


def is_valid(fmt: DatasetFormat) -> Callable[[Any], bool]:
    """A predicate equal to ``record_problem(r, fmt, ...) is None``, as fast as can be for the
    hot loop (the problem itself is worked out only for records that fail)."""
    if fmt is DatasetFormat.OPENAI_CHAT:
        return _valid_chat
    problem = PROBLEM[fmt]
    return lambda r: problem(r) is None
