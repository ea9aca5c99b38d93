"""chat.py: the rendered chat and its assistant-token mask (the tokens the loss is taken over)."""

import pytest

from prismatic.errors import PrismError
from prismatic.gradients.chat import IGNORE, encode_chat

SAMPLES = [
    ("What is 12 + 30?", "12 + 30 = 42, so the answer is \\boxed{42}."),
    ("Premise: A dog runs.\nHypothesis: An animal moves.", "Running is moving. \\boxed{entailment}"),
    ("Tom has 3 apples and eats one. How many are left?", "3 - 1 = 2. \\boxed{2}"),
]


def test_assistant_mask_is_exactly_the_response_and_end_of_turn(tiny_lm):
    _, tok = tiny_lm
    for prompt, response in SAMPLES:
        chat = encode_chat(tok, prompt, response)
        labelled = chat.labels[chat.labels != IGNORE]
        assert tok.decode(labelled) == response + "<|im_end|>"
        # Everything labelled forms one contiguous span that starts right after the generation prompt.
        positions = (chat.labels != IGNORE).nonzero().squeeze(1)
        assert positions.tolist() == list(range(positions[0], positions[-1] + 1))
        prefix = tok.decode(chat.input_ids[:positions[0]])
        assert prefix.endswith("<|im_start|>assistant\n")
        assert prompt in prefix


def test_truncation_is_flagged_and_refused_when_nothing_is_left(tiny_lm):
    _, tok = tiny_lm
    full = encode_chat(tok, *SAMPLES[0])
    cut = encode_chat(tok, *SAMPLES[0], max_tokens=full.n_tokens - 3)
    assert cut.truncated and not full.truncated
    assert cut.n_tokens == full.n_tokens - 3
    with pytest.raises(PrismError, match="no assistant token"):
        encode_chat(tok, *SAMPLES[0], max_tokens=5)


@pytest.mark.slow
def test_smollm2_assistant_mask_with_its_default_system_prompt(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    chat = encode_chat(tok, "What is 2+2?", "2+2=4. \\boxed{4}")
    assert tok.decode(chat.labels[chat.labels != IGNORE]) == "2+2=4. \\boxed{4}<|im_end|>"
    assert "You are a helpful AI assistant named SmolLM" in tok.decode(chat.input_ids)
