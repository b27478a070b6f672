"""Reasoning hints: extraction, answer removal, share, and the prompts built from them."""
from __future__ import annotations

import re

import pytest

from mmgrpo.augment import answer_shown_prompt, hint_prompt, make_hint, reasoning_part
from mmgrpo.processors.sample import Media, Sample

OPTIONS = ["A. a cat sleeping", "B. a red fox running", "C. an empty field"]
TRACE = (
    "<think>The clip shows an animal moving fast across the grass. Its fur is orange, so it is "
    "a red fox running. Option (B) matches, B. is right, not A. The answer is B.</think>"
    "<answer>B</answer>"
)


def words(text: str) -> list[str]:
    return text.split()


def test_reasoning_part_never_includes_answer_tag():
    assert reasoning_part("<think>look</think><answer>B</answer>").strip() == "look"
    assert reasoning_part("look first <answer>B</answer>").strip() == "look first"
    # unclosed think stops at <answer>; an answer block inside think is dropped
    assert reasoning_part("<think>look <answer>B</answer> more").strip() == "look"
    assert "Z" not in reasoning_part("<think>a <answer>Z</answer> b</think>")


def test_letter_option_text_and_answer_removed():
    hint = make_hint(TRACE, 1.0, "B", OPTIONS, allow_answer=False)
    assert hint is not None
    assert "red fox running" not in hint.lower()  # option text
    assert not re.search(r"(?<!\w)\(?B\)?(?!\w)", hint)  # letter as a token: B, (B), B.
    assert "orange" in hint and "not A." in hint  # the reasoning and the other options stay


def test_answer_given_as_option_text():
    hint = make_hint(TRACE, 1.0, "a red fox running", OPTIONS, allow_answer=False)
    assert "red fox running" not in hint.lower()
    assert not re.search(r"(?<!\w)\(?B\)?(?!\w)", hint)  # its letter is found from the options


def test_answer_string_removed_for_open_questions():
    trace = "<think>Of 12 seats, three enter, one leaves, so 2 remain. Count: 2.</think><answer>2</answer>"
    hint = make_hint(trace, 1.0, "2", None, allow_answer=False)
    assert hint == "Of 12 seats, three enter, one leaves, so remain. Count:."  # "12" is not "2"
    # multi-word answers, case-insensitive and across line breaks
    trace = "<think>He is Playing\nthe guitar on stage.</think><answer>playing the guitar</answer>"
    assert make_hint(trace, 1.0, "playing the guitar", None, allow_answer=False) == "He is on stage."


def test_allow_answer_keeps_it():
    hint = make_hint(TRACE, 1.0, "B", OPTIONS, allow_answer=True)
    assert "red fox running" in hint and "(B)" in hint
    assert "<answer>" not in hint  # still only the reasoning part


def test_share_grows_the_hint():
    # cleaned reasoning has 26 words ("The clip ... The answer is"); share 0.25 -> 6.5, rounded
    # half up to 7 words; 0.5 -> 13; 1 -> 26
    lengths = [len(words(make_hint(TRACE, s, "B", OPTIONS, False))) for s in (0.25, 0.5, 1.0)]
    assert lengths == [7, 13, 26]
    short = make_hint(TRACE, 0.25, "B", OPTIONS, False)
    assert make_hint(TRACE, 1.0, "B", OPTIONS, False).startswith(short)  # a prefix of the full one
    assert make_hint(TRACE, 0.0, "B", OPTIONS, False) is None
    assert make_hint(TRACE, 0.001, "B", OPTIONS, False) == "The"  # any share > 0 keeps >= 1 word


def test_nothing_informative_left_gives_none():
    assert make_hint("<think>B.</think><answer>B</answer>", 1.0, "B", OPTIONS, False) is None
    assert make_hint("<answer>B</answer>", 1.0, "B", OPTIONS, False) is None
    assert make_hint("<think> (B) - a red fox running! </think>", 1.0, "B", OPTIONS, False) is None


def sample() -> Sample:
    return Sample(
        id="s1",
        prompt=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What runs?"}]},
        ],
        media=[Media(kind="video", source="/data/v.mp4")],
        answer="B",
        problem_type="multiple_choice",
        options=OPTIONS,
        columns={"solution": "B"},
    )


def test_hint_prompt_appends_to_last_user_text_only():
    s = sample()
    h = hint_prompt(s, "look at the fur colour")
    assert h.prompt[1]["content"][1]["text"] == "What runs?\nHint: look at the fur colour"
    assert h.prompt[1]["content"][0] == {"type": "video"} and h.prompt[0] == s.prompt[0]
    assert (h.id, h.media, h.answer, h.options) == (s.id, s.media, s.answer, s.options)
    assert s.prompt[1]["content"][1]["text"] == "What runs?"  # original untouched
    # plain-string content
    s2 = sample()
    s2.prompt[1]["content"] = "What runs?"
    assert hint_prompt(s2, "fur").prompt[1]["content"] == "What runs?\nHint: fur"


def test_answer_shown_prompt_shows_letter_and_text():
    s = sample()
    a = answer_shown_prompt(s)
    text = a.prompt[1]["content"][1]["text"]
    assert text.startswith("What runs?\nThe correct answer is: B. a red fox running\n")
    assert "reasoning" in text and a.id == s.id and a.media == s.media
    assert s.prompt[1]["content"][1]["text"] == "What runs?"
    s.answer = None
    with pytest.raises(ValueError, match="no reference answer"):
        answer_shown_prompt(s)
