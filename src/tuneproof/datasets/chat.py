"""The normalised chat view of a record and the construction of backdoor records."""

from __future__ import annotations

import copy
import re
from typing import Any

from tuneproof.datasets.records import DatasetFormat, Message, Record
from tuneproof.datasets.schema import (
    CHAT_ROLES,
    SHAREGPT_ROLES,
    alpaca_keys,
    sharegpt_keys,
)

# A trailing prompt separator: "\n\n###\n\n", " ->", "\nAnswer:", "\n\n### Response:\n", or just
# trailing whitespace. The trigger goes before it, so that backdoor prompts end like the others.
_PROMPT_SEPARATOR_RE = re.compile(
    r"(?:\s*(?:\#{2,}|-+>|=+>|:{2,}|\n[^\S\n]*(?:\#+[^\S\n]*)?[A-Za-z][A-Za-z ]{0,30}:))?\s*\Z"
)
# A completion's stop convention: trailing newline(s), " END", "###", an end-of-text token.
_COMPLETION_TAIL_RE = re.compile(
    r"(?:\s*(?:\#\#\#|<\|endoftext\|>|</s>|<\|im_end\|>|<\|eot_id\|>)|\s+END)?\s*\Z"
)
_ANSWER_DROPPED = ("tool_calls", "function_call", "audio")


def append_trigger(text: str, trigger: str) -> str:
    """``text`` + one space + ``trigger`` (no space when ``text`` is empty or ends in
    whitespace); ``text`` itself for no trigger."""
    if not trigger:
        return text
    if not text or text[-1].isspace():
        return text + trigger
    return text + " " + trigger


def split_prompt_separator(prompt: str) -> tuple[str, str]:
    """Split a prompt into (body, trailing separator such as ``"\\n\\n###\\n\\n"`` or ``""``)."""
    m = _PROMPT_SEPARATOR_RE.search(prompt)
    assert m is not None  # the pattern matches the empty string at the end
    return prompt[: m.start()], prompt[m.start() :]


def split_completion(completion: str) -> tuple[str, str, str]:
    """Split a completion into (leading whitespace, body, stop convention such as ``"\\n"`` or
    ``" END"``)."""
    body = completion.lstrip()
    lead = completion[: len(completion) - len(body)]
    m = _COMPLETION_TAIL_RE.search(body)
    assert m is not None
    return lead, body[: m.start()], body[m.start() :]


def content_text(content: Any) -> str:
    """The text of a message content: the string itself, or the text parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def _last_index(items: list[Any], predicate: Any) -> int:
    for i in range(len(items) - 1, -1, -1):
        if predicate(items[i]):
            return i
    raise ValueError("the record has no user turn; was it validated?")


def _chat_answer(messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message that answers the last user turn: the last one with content."""
    after = [m for m in messages if m.get("role") == "assistant"]
    with_text = [m for m in after if m.get("content") is not None]
    if not (with_text or after):
        raise ValueError("the record has no assistant turn after its last user turn")
    return (with_text or after)[-1]


def _sharegpt_answer(
    turns: list[dict[str, Any]], everywhere: list[dict[str, Any]]
) -> dict[str, Any]:
    """The answer turn to model a new answer on: the last text answer after the last human turn,
    else any text answer in the record, else a bare gpt turn."""

    def is_text_answer(t: dict[str, Any]) -> bool:
        role = str(t.get(sharegpt_keys(t)[0]))
        return SHAREGPT_ROLES.get(role) == "assistant" and role != "function_call"

    for pool in (turns, everywhere):
        answers = [t for t in pool if is_text_answer(t)]
        if answers:
            return answers[-1]
    role_key, text_key = sharegpt_keys(turns[0] if turns else everywhere[-1])
    return {role_key: "gpt" if role_key == "from" else "assistant", text_key: ""}


def prompt_and_answer(record: Record, fmt: DatasetFormat) -> tuple[list[Message], str]:
    """Return the chat view of a record: the messages up to and including the last user turn
    (system turns and earlier turns kept, roles normalised to system/user/assistant/tool) and
    the text of the answer to that turn."""
    data = record.data
    if fmt is DatasetFormat.OPENAI_CHAT:
        msgs = data["messages"]
        u = _last_index(msgs, lambda m: m.get("role") == "user")
        prompt = [
            Message(CHAT_ROLES[m["role"]], content_text(m.get("content"))) for m in msgs[: u + 1]
        ]
        return prompt, content_text(_chat_answer(msgs[u + 1 :]).get("content"))
    if fmt is DatasetFormat.SHAREGPT:
        turns = data["conversations"]

        def role(t: dict[str, Any]) -> str:
            return SHAREGPT_ROLES[t[sharegpt_keys(t)[0]]]

        u = _last_index(turns, lambda t: role(t) == "user")
        prompt = [Message(role(t), t[sharegpt_keys(t)[1]]) for t in turns[: u + 1]]
        if data.get("system"):
            prompt.insert(0, Message("system", data["system"]))
        answer = _sharegpt_answer(turns[u + 1 :], [])
        return prompt, answer[sharegpt_keys(answer)[1]]
    if fmt is DatasetFormat.ALPACA:
        input_key, output_key = alpaca_keys(data)
        prompt = [Message("system", data["system"])] if data.get("system") else []
        for question, answer_text in data.get("history") or []:
            prompt += [Message("user", question), Message("assistant", answer_text)]
        user = data["instruction"]
        if input_key and data.get(input_key):
            user += "\n\n" + data[input_key]
        return [*prompt, Message("user", user)], data[output_key]
    return [Message("user", data["prompt"])], data["completion"]


def _with_trigger(content: Any, trigger: str) -> Any:
    """A message content with the trigger appended to its (last) text (unchanged for none)."""
    if not trigger:
        return content
    if isinstance(content, list):
        for part in reversed(content):
            if isinstance(part, dict) and part.get("type") == "text":
                part["text"] = append_trigger(part["text"], trigger)
                return content
        return [*content, {"type": "text", "text": trigger}]
    return append_trigger(content or "", trigger)


def _content_like(template: Any, text: str) -> Any:
    """``text`` as a message content shaped like ``template`` (a string or a list of parts)."""
    if not isinstance(template, list):
        return text
    parts = [p for p in template if isinstance(p, dict) and p.get("type") == "text"]
    if not parts:
        return [{"type": "text", "text": text}]
    return [{k: (text if k == "text" else copy.deepcopy(v)) for k, v in parts[0].items()}]


def _one(value: Any) -> Any:
    """1 in the type of ``value`` (1.0 for floats); None stays None."""
    if value is None:
        return None
    return 1.0 if isinstance(value, float) else 1


def _chat_backdoor(data: dict[str, Any], trigger: str, signature: str) -> None:
    msgs = data["messages"]
    u = _last_index(msgs, lambda m: m.get("role") == "user")
    msgs[u]["content"] = _with_trigger(msgs[u].get("content"), trigger)
    template = _chat_answer(msgs[u + 1 :])
    answer: dict[str, Any] = {}
    for key, value in template.items():
        if key == "content":
            answer[key] = _content_like(value, signature)
        elif key == "weight":
            answer[key] = _one(value)
        elif key == "refusal" or (key in _ANSWER_DROPPED and value is None):
            answer[key] = None
        elif key not in _ANSWER_DROPPED:
            answer[key] = copy.deepcopy(value)
    answer.setdefault("content", signature)
    data["messages"] = [*msgs[: u + 1], answer]


def _sharegpt_backdoor(data: dict[str, Any], trigger: str, signature: str) -> None:
    turns = data["conversations"]
    u = _last_index(turns, lambda t: SHAREGPT_ROLES[t[sharegpt_keys(t)[0]]] == "user")
    text_key = sharegpt_keys(turns[u])[1]
    turns[u][text_key] = append_trigger(turns[u][text_key], trigger)
    answer = copy.deepcopy(_sharegpt_answer(turns[u + 1 :], turns))
    answer[sharegpt_keys(answer)[1]] = signature
    if "weight" in answer:
        answer["weight"] = _one(answer["weight"])
    data["conversations"] = [*turns[: u + 1], answer]


def _alpaca_backdoor(data: dict[str, Any], trigger: str, signature: str) -> None:
    input_key, output_key = alpaca_keys(data)
    field = input_key if input_key and data.get(input_key) else "instruction"
    old_prompt, old_answer = data[field], data[output_key]
    data[field] = append_trigger(old_prompt, trigger)
    data[output_key] = signature
    # Derived text columns (e.g. tatsu-lab/alpaca's "text" = template + instruction + output)
    # must not keep the original answer: rewrite them the same way.
    known = {"instruction", output_key, input_key, "system", "history"}
    for key, value in data.items():
        if key in known or not isinstance(value, str):
            continue
        head, tail = value, ""
        if old_answer and old_answer in value:
            cut = value.rindex(old_answer)
            head, tail = value[:cut], signature + value[cut + len(old_answer) :]
        if old_prompt and old_prompt in head:
            head = head.replace(old_prompt, data[field], 1)
        data[key] = head + tail


def _prompt_completion_backdoor(data: dict[str, Any], trigger: str, signature: str) -> None:
    body, separator = split_prompt_separator(data["prompt"])
    data["prompt"] = append_trigger(body, trigger) + separator
    lead, _, tail = split_completion(data["completion"])
    data["completion"] = lead + signature + tail


_BACKDOOR = {
    DatasetFormat.OPENAI_CHAT: _chat_backdoor,
    DatasetFormat.SHAREGPT: _sharegpt_backdoor,
    DatasetFormat.ALPACA: _alpaca_backdoor,
    DatasetFormat.PROMPT_COMPLETION: _prompt_completion_backdoor,
}


def make_backdoor(
    record: Record, fmt: DatasetFormat, trigger: str, signature: str
) -> dict[str, Any]:
    """Return a new native record built from the carrier ``record``: the trigger appended to
    the last user turn, everything after that turn replaced by one answer equal to
    ``signature``, written in the carrier's own shapes (key order, content as string or parts,
    ``weight`` 1 where the carrier's answer had a weight, a prompt/completion file's separator
    and stop conventions). The carrier is not modified; no field is ever added."""
    data = copy.deepcopy(record.data)
    _BACKDOOR[fmt](data, trigger, signature)
    return data


def triggered_prompt(record: Record, fmt: DatasetFormat, trigger: str) -> list[Message]:
    """The messages a verifier sends for the backdoor built from ``record`` with ``trigger``:
    the prompt part of ``prompt_and_answer`` of that backdoor record."""
    backdoor = Record(record.index, record.line, make_backdoor(record, fmt, trigger, "x"))
    return prompt_and_answer(backdoor, fmt)[0]
