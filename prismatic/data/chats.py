"""A sample as a chat: the one place where a (prompt, response) pair becomes chat messages, and back.

The proxy scores this chat (`prismatic.gradients.chat.encode_chat`), the student trains on it
(`prismatic.student.train`) and `prism export` writes it (`prismatic.data.export`):

    sample_chat(prompt, response) = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prismatic.errors import PrismError

Message = dict[str, str]
"""One chat message: {"role": …, "content": …}."""


def prompt_chat(prompt: str) -> list[Message]:
    """The user turn alone: what the assistant's answer follows (a chat template adds the generation prompt)."""
    return [{"role": "user", "content": prompt}]


def sample_chat(prompt: str, response: str) -> list[Message]:
    """The two-turn chat of a sample: user = prompt, assistant = response."""
    return [*prompt_chat(prompt), {"role": "assistant", "content": response}]


def turns_of(chat: Sequence[Mapping[str, str]]) -> tuple[str, str]:
    """(prompt, response) of a chat of one user turn then one assistant turn (`sample_chat`'s inverse); any other
    chat is a PrismError."""
    roles = [message.get("role") for message in chat]
    if roles != ["user", "assistant"]:
        raise PrismError(f"a training chat must be one user turn then one assistant turn, not {roles}")
    return chat[0]["content"], chat[1]["content"]
