"""Answer extraction, math equality and majority vote (prismatic.synthesis.verify)."""

from __future__ import annotations

import threading

import pytest

from prismatic.synthesis.verify import extract_answer, extract_boxed, majority_vote, math_equal, nli_label


@pytest.mark.parametrize("text, expected", [
    ("so the answer is \\boxed{38}", "38"),
    ("\\boxed{1} then corrected: \\boxed{2}.", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("x = \\boxed{ \\sqrt{x^{2}} } end", "\\sqrt{x^{2}}"),
    ("\\boxed {42}", "42"),
    ("\\fbox{7}", "7"),
    ("first \\boxed{5} then a cut-off \\boxed{\\frac{1}{", "5"),
    ("no box here: 42", None),
    ("\\boxed{}", None),
    ("", None),
    (None, None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize("a, b", [
    ("0.5", "\\frac{1}{2}"),
    ("1,000", "1000"),
    ("38", "38.0"),
    ("\\dfrac{3}{4}", "0.75"),
    ("x + 1", "1 + x"),
    ("50\\%", "0.5"),
    ("$66$", "66"),
    ("\\sqrt{4}", "2"),
    ("2, 3", "3, 2"),
    ("entailment", "entailment"),
])
def test_math_equal_equivalent_forms(a, b):
    assert math_equal(a, b)
    assert math_equal(b, a)


@pytest.mark.parametrize("a, b", [
    ("3", "4"),
    ("\\frac{1}{3}", "0.333"),
    ("1,2", "12"),
    ("x", "x + 1"),
    ("38", ""),
    ("38", None),
    ("neutral", "contradiction"),
])
def test_math_equal_different_answers(a, b):
    assert not math_equal(a, b)
    assert not math_equal(b, a)


def test_math_equal_works_off_the_main_thread():
    """math-verify's SIGALRM timeout only works in the main thread; others run without it."""
    results = []
    thread = threading.Thread(target=lambda: results.append((math_equal("0.25", "\\frac{1}{4}"),
                                                             math_equal("2", "3"))))
    thread.start()
    thread.join()
    assert results == [(True, False)]


def test_majority_vote_picks_the_most_common_equal_group():
    answer, agree, size = majority_vote(["\\frac{1}{2}", "3", "0.5"])
    assert (answer, agree, size) == ("\\frac{1}{2}", [0, 2], 2)


def test_majority_vote_ties_go_to_the_first_seen_group():
    assert majority_vote(["4", "5", "6"]) == ("4", [0], 1)
    assert majority_vote(["7", "8", "8", "7"]) == ("7", [0, 3], 2)


def test_majority_vote_skips_empty_answers():
    assert majority_vote([None, "", "  ", "9"]) == ("9", [3], 1)
    assert majority_vote([None, None, None]) == (None, [], 0)
    assert majority_vote([]) == (None, [], 0)


def test_majority_vote_min_agree():
    assert majority_vote(["1", "2", "3"], min_agree=2) == (None, [], 0)
    assert majority_vote(["1", "2", "1.0"], min_agree=2) == ("1", [0, 2], 2)
    assert majority_vote([None, "2", None], min_agree=2) == (None, [], 0)
    with pytest.raises(ValueError):
        majority_vote(["1"], min_agree=0)


def test_majority_vote_with_a_custom_equality():
    answer, agree, size = majority_vote(["neutral", "entailment", "neutral"], equal=str.__eq__)
    assert (answer, agree, size) == ("neutral", [0, 2], 2)


@pytest.mark.parametrize("text, label", [
    ("entailment", "entailment"),
    (" Neutral.", "neutral"),
    ("**Contradiction**", "contradiction"),
    ("The hypothesis follows. \\boxed{entailment}", "entailment"),
    ("\\boxed{\\text{Contradiction}}", "contradiction"),
    ("It could be true or not, so the answer is neutral.", "neutral"),
    ("The premise contradicts the hypothesis.", "contradiction"),
    ("\\boxed{entailment or neutral}", None),
    ("\\boxed{yes}", None),
    ("I am not sure.", None),
    ("", None),
    (None, None),
])
def test_nli_label(text, label):
    assert nli_label(text) == label


@pytest.mark.parametrize("text,expected", [
    ("so 3 + 4 = 7. \\boxed{7}", "7"),
    ("Therefore, the ball costs $0.20.\n\nThe final answer is 20.", "20"),
    ("The final answer is: 1,250 apples", "1250"),
    ("So the answer is -3.5 degrees.", "-3.5"),
    ("So, the final answer is \\boxed{answer}", None),  # the template copied, no number after it
    ("So, the final answer is \\boxed{answer}. The answer is 12.", "12"),
    ("I think it is about 12.", None),  # a bare number is not an answer
    ("", None),
])
def test_extract_answer_falls_back_to_a_stated_final_answer(text, expected):
    assert extract_answer(text) == expected
