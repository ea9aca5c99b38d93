"""A sample as the proxy sees it: its chat's token ids and the assistant-token mask.

A sample (prompt, response) is rendered with the tokenizer's chat template as its chat
(`prismatic.data.chats.sample_chat`: user = prompt, assistant = response). The assistant tokens A are
the response's tokens plus the end-of-turn token that closes it; every other position is labelled
`IGNORE`. Both gradient paths (faithful.py, fast.py)
and the NLL baseline score exactly these tokens with the mean next-token cross-entropy

    L(θ) = −(1/|A|) Σ_{t∈A} log p_θ(x_t | x_<t)        (nats per assistant token).

See docs/formulas.md for the loss and the features built on its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prismatic.data.chats import prompt_chat, sample_chat
from prismatic.errors import PrismError

IGNORE = -100
"""The label of a token outside the assistant span (PyTorch cross-entropy's `ignore_index`)."""


@dataclass
class EncodedChat:
    """Token ids of the rendered chat and the next-token labels (IGNORE outside the assistant)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    truncated: bool

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def n_assistant(self) -> int:
        return int((self.labels != IGNORE).sum())


def encode_chat(tokenizer, prompt: str, response: str, max_tokens: int | None = None) -> EncodedChat:
    """Render user=prompt, assistant=response and mark the assistant tokens.

    The assistant span is found in characters (rendered text after the generation prompt, through
    the end-of-turn token) and mapped to tokens with the tokenizer's offsets, so it is exact for
    any template that copies the content verbatim. With `max_tokens`, the tail is cut and
    `truncated` set; a sample with no assistant token left is refused.
    """
    prefix = tokenizer.apply_chat_template(prompt_chat(prompt), tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(sample_chat(prompt, response), tokenize=False)
    if not full.startswith(prefix) or full[len(prefix):len(prefix) + len(response)] != response:
        raise PrismError("the chat template does not render the assistant content after the generation "
                         "prompt; assistant-only loss needs a template that does")
    start = len(prefix)
    stop = start + len(response)
    end_of_turn = tokenizer.eos_token or ""
    if end_of_turn and full.startswith(end_of_turn, stop):
        stop += len(end_of_turn)
    encoding = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    in_span = torch.tensor([end > start and begin < stop for begin, end in encoding["offset_mapping"]])
    labels = torch.where(in_span, ids, torch.full_like(ids, IGNORE))
    truncated = max_tokens is not None and ids.numel() > max_tokens
    if truncated:
        ids, labels = ids[:max_tokens], labels[:max_tokens]
    if not bool((labels[1:] != IGNORE).any()):
        raise PrismError("no assistant token is left to score (empty response, or cut by max_tokens)")
    return EncodedChat(ids, labels, truncated)
