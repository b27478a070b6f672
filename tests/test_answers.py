"""Answer parsing and whole-answer scoring (mmgrpo/answers.py)."""
from __future__ import annotations

import pytest

from mmgrpo.answers import (
    extract_answer_tag,
    is_hedge,
    normalize_text,
    parse_choice,
    parse_number,
    rouge_l,
    score_answer,
    temporal_iou,
)


def test_extract_answer_tag_last_one():
    assert extract_answer_tag("<answer>A</answer> then <answer> B </answer>") == "B"
    assert extract_answer_tag("<think>x</think><answer>\n42\n</answer>") == "42"
    assert extract_answer_tag("no tag") is None
    assert extract_answer_tag("<answer></answer>") == ""
    assert extract_answer_tag("<answer>unclosed") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"), ("(B)", "B"), ("B.", "B"), ("b", "B"), ("answer: B", "B"), ("Answer: (B)", "B"),
        ("The answer is C.", "C"), ("<answer>B</answer>", "B"), ("<answer> (D) </answer>", "D"),
        ("B) a red car", "B"), ("B. The cat", "B"), ("(B) the cat", "B"), ("**B**", "B"),
        ("<think>A looks wrong, so</think><answer>B</answer>", "B"),
        ("I am sure (C) is right", "C"),
    ],
)
def test_parse_choice_accepts(text, expected):
    assert parse_choice(text, 4) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "<answer></answer>", "A or B or C", "A, B", "A/B", "(A) and (B)", "Answer: B or C",
     "<answer>A or B</answer>", "E", "the answer is a cat", "(A) or maybe (B) is it", "nothing here"],
)
def test_parse_choice_rejects(text):
    assert parse_choice(text, 4) is None


def test_parse_choice_option_count():
    assert parse_choice("E", 5) == "E"
    assert parse_choice("E", 4) is None


@pytest.mark.parametrize(
    "text, expected",
    [("42", 42.0), ("-3", -3.0), ("1,234.5", 1234.5), ("3/4", 0.75), ("50%", 50.0), ("$12", 12.0),
     ("1e-3", 0.001), ("<answer>12 apples</answer>", 12.0), ("so 3 + 5 gives... the answer is 8.", 8.0)],
)
def test_parse_number(text, expected):
    assert parse_number(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "3 or 5", "3, 4", "<answer>between 3 and 5</answer>", "seven", "1/0"])
def test_parse_number_rejects(text):
    assert parse_number(text) is None


def test_is_hedge():
    assert is_hedge("A or B or C") and is_hedge("1, 2") and is_hedge("a and b")
    assert not is_hedge("B") and not is_hedge("1,234") and not is_hedge("black and white cat")
    assert not is_hedge("A or A")  # one distinct item


def test_normalize_text():
    assert normalize_text("  The Cat, sat!  ") == "cat sat"
    assert normalize_text("An apple") == "apple"


def test_rouge_l_hand_computed():
    # ref "a cat sat down" (4 tokens), pred "the cat sat" (3): LCS "cat sat" = 2
    # P = 2/3, R = 2/4, F = 2PR / (P + R) = (2 * 1/3) / (7/6) = 4/7
    assert rouge_l("the cat sat", "a cat sat down") == pytest.approx(4 / 7)
    assert rouge_l("", "a cat") == 0.0


def test_temporal_iou_hand_computed():
    assert temporal_iou("[10, 20]", "15 - 25") == pytest.approx(5 / 15)  # overlap 15-20, union 10-25
    assert temporal_iou((0.0, 10.0), (5.0, 10.0)) == pytest.approx(0.5)
    assert temporal_iou("<answer>12.5 to 30 seconds</answer>", [12.5, 30]) == pytest.approx(1.0)
    assert temporal_iou("[20, 10]", "[10, 20]") == 0.0  # start after end
    assert temporal_iou("10", "[1, 2]") == 0.0
    assert temporal_iou("[1, 2]", "[3, 4]") == 0.0


@pytest.mark.parametrize(
    "pred, answer, ptype, options, expected",
    [
        ("<answer>B</answer>", "B", "multiple_choice", None, 1.0),
        ("<answer>(B) dog</answer>", "B. dog", "multiple_choice", ["A. cat", "B. dog"], 1.0),
        ("<answer>dog</answer>", "B", "multiple_choice", ["A. cat", "B. dog"], 1.0),  # option text
        ("<answer>C</answer>", "B", "multiple_choice", None, 0.0),
        ("<answer>A or B or C</answer>", "B", "multiple_choice", None, 0.0),
        ("<answer></answer>", "B", "multiple_choice", None, 0.0),
        ("<answer>3.14</answer>", "3.1416", "numeric", None, 1.0),
        ("<answer>3.0</answer>", "3.1416", "numeric", None, 0.0),
        ("<answer>314</answer>", "3.14", "numeric", None, 0.0),  # "3.14" is a substring trick target
        ("<answer>0</answer>", "0", "numeric", None, 1.0),
        ("<answer>1 or 2</answer>", "2", "numeric", None, 0.0),
        ("<answer>The Eiffel Tower</answer>", "eiffel tower", "exact", None, 1.0),
        ("<answer>Eiffel</answer>", "eiffel tower", "exact", None, 0.0),  # substring of the answer
        ("<answer>the eiffel tower in paris</answer>", "eiffel tower", "exact", None, 0.0),  # superstring
        ("<answer></answer>", "", "exact", None, 0.0),
        ("<answer>a cat sat down</answer>", "a cat sat down", "free_text", None, 1.0),
        ("<answer>A or B or C</answer>", "B", "free_text", None, 0.0),
        ("<answer>[10, 20]</answer>", "[15, 25]", "temporal_iou", None, 1 / 3),
    ],
)
def test_score_answer(pred, answer, ptype, options, expected):
    assert score_answer(pred, answer, ptype, options=options) == pytest.approx(expected)


def test_score_answer_unknown_type():
    with pytest.raises(ValueError, match="problem_type"):
        score_answer("B", "B", "multiple-choice")
