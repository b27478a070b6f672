"""Easier inputs for hard samples (ΔR > δ): reasoning hints (DeepVideo-R1 §3.3).

The paper takes the best-rewarded reasoning trace for the prompt and puts a partial trace into the
prompt, the share growing with |ΔR|. When no completion of that prompt has scored yet, the trace is
"generated with the answer in view": `answer_shown_prompt` builds that prompt.

Deviation: by default (allow_answer=False, AugmentConfig.hint_allow_answer) the final answer is cut
out of the hint (answer string, option letter, option text). The paper does not say; a hint that
states the answer teaches copying the hint rather than reasoning from the video, and a trace
generated with the answer in view usually names it.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re

from mmgrpo.processors.sample import Sample

_THINK = re.compile(r"<think>(.*?)(?:</think>|<answer>|$)", re.DOTALL)
_ANSWER_BLOCK = re.compile(r"<answer>.*?(?:</answer>|$)", re.DOTALL)
_TAG = re.compile(r"</?\s*(?:think|answer)\s*>")
# An option letter with its punctuation: "B", "(B)", "[B]", "B.", "B)", "B:", then text or the end.
# A bare "A " is not a prefix: "A man runs" is an option text, not option A.
_LETTER_PREFIX = re.compile(r"^\s*[(\[]?([A-Za-z])(?:[)\].:](?:\s+|$)|\s*$)")
_HAS_CONTENT = re.compile(r"\w")


def reasoning_part(trace: str) -> str:
    """The reasoning of a completion: the <think> content if present, else the text before <answer>.
    Whatever sits inside <answer>…</answer> is never part of it."""
    m = _THINK.search(trace)
    text = m.group(1) if m else trace.split("<answer>", 1)[0]
    text = _ANSWER_BLOCK.sub(" ", text)
    return _TAG.sub(" ", text)


def _split_option(option: str, index: int) -> tuple[str, str]:
    """(letter, text) of an option written "B. dog", "(B) dog" or just "dog" (letter from its position)."""
    m = _LETTER_PREFIX.match(option)
    if m and option[m.end() :].strip():
        return m.group(1).upper(), option[m.end() :].strip()
    return chr(ord("A") + index), option.strip()


def answer_terms(answer: str | None, options: list[str] | None) -> tuple[list[str], str | None]:
    """(strings that give the answer away, longest first; the correct option letter or None).

    The answer may be a letter ("B", "(B)", "B. dog") or the option text ("dog"). The letter is
    returned apart: it is removed as a standalone token (`_remove_letter`), never as a substring.
    """
    if not answer or not answer.strip():
        return [], None
    answer = answer.strip()
    m = _LETTER_PREFIX.match(answer)
    given = m.group(1).upper() if m else None
    rest = answer[m.end() :].strip() if m else answer  # "dog" of "B. dog"; "" for a bare letter
    terms = [rest]
    # no options: only an upper-case bare letter counts as one ("a" may be a real answer)
    letter = given if not options and m and m.group(1).isupper() else None
    for i, raw in enumerate(options or []):
        opt_letter, opt_text = _split_option(raw, i)
        if opt_letter == given or opt_text.casefold() in (answer.casefold(), rest.casefold()):
            letter = opt_letter
            terms += [raw.strip(), opt_text]
            break
    if letter is None:
        terms.append(answer)  # not a recognised letter: the whole string is the answer
    return sorted({t for t in terms if t}, key=lambda t: (-len(t), t)), letter


def _remove_terms(text: str, terms: list[str]) -> str:
    """Remove each term as a whole-word sequence, case-insensitively, any whitespace between words."""
    for term in terms:
        body = r"\s+".join(re.escape(w) for w in term.split())
        text = re.sub(rf"(?<!\w){body}(?!\w)", " ", text, flags=re.IGNORECASE)
    return text


def _remove_letter(text: str, letter: str) -> str:
    """Remove the option letter as a standalone token: "B", "(B)", "[B]", "B.", "B)", "B:".

    Case-sensitive so the article "a" survives; a sentence-initial "A" does not when A is the
    answer (a harmless loss of one word)."""
    return re.sub(rf"(?<!\w)[(\[]?{letter}[)\]]?(?:[.:,](?!\w))?(?!\w)", " ", text)


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([.,;:!?])", r"\1", text)


def make_hint(
    trace: str, share: float, answer: str | None, options: list[str] | None, allow_answer: bool
) -> str | None:
    """First `share` (by words) of the trace's reasoning, answer removed unless `allow_answer`.

    share is clipped to [0, 1]; the caller passes the scheduler's strength, so the hint grows with
    |ΔR| (DeepVideo-R1 §3.3). The answer is removed from the whole reasoning before cutting, so the
    share counts informative words. None when nothing with a letter or digit is left.
    """
    share = min(1.0, max(0.0, float(share)))
    text = reasoning_part(trace)
    if not allow_answer:
        terms, letter = answer_terms(answer, options)
        text = _remove_terms(text, terms)
        if letter is not None:
            text = _remove_letter(text, letter)
    words = _tidy(text).split()
    k = 0 if share == 0 else max(1, math.floor(share * len(words) + 0.5))  # round half up, >= 1 word
    hint = " ".join(words[:k])
    return hint if _HAS_CONTENT.search(hint) else None


def _with_user_text(sample: Sample, extra: str) -> Sample:
    """Copy of `sample` with `extra` appended to its last user text; media and id unchanged."""
    prompt = copy.deepcopy(sample.prompt)
    users = [m for m in prompt if m["role"] == "user"]
    if not users:
        raise ValueError(f"sample {sample.ref}: no user message to extend")
    msg = users[-1]
    if isinstance(msg["content"], str):
        msg["content"] += extra
    else:
        texts = [c for c in msg["content"] if c["type"] == "text"]
        if texts:
            texts[-1]["text"] = texts[-1].get("text", "") + extra
        else:
            msg["content"].append({"type": "text", "text": extra.lstrip("\n")})
    return dataclasses.replace(sample, prompt=prompt, media=list(sample.media), columns=dict(sample.columns))


def hint_prompt(sample: Sample, hint: str) -> Sample:
    """The sample with "\\nHint: {hint}" appended to its last user text (DeepVideo-R1 §3.3 easier input).
    The rollout of this prompt is rewarded against the original sample's answer."""
    return _with_user_text(sample, f"\nHint: {hint}")


def answer_shown_prompt(sample: Sample) -> Sample:
    """The sample with the reference answer shown, asking for the reasoning that leads to it.

    This is DeepVideo-R1 §3.3's trace "generated with the answer in view", used when no completion
    of the sample has scored yet (`DifficultyScheduler.best_trace` is None). Its completions are
    only a source of hints (`make_hint` removes the answer again); never train on this prompt.
    """
    if sample.answer is None or not sample.answer.strip():
        raise ValueError(f"sample {sample.ref}: no reference answer to show")
    shown = sample.answer.strip()
    _, letter = answer_terms(sample.answer, sample.options)
    for i, raw in enumerate(sample.options or []):
        opt_letter, opt_text = _split_option(raw, i)
        if opt_letter == letter:
            shown = f"{opt_letter}. {opt_text}"  # letter and text, whichever form the answer had
    return _with_user_text(
        sample,
        f"\nThe correct answer is: {shown}\n"
        "Explain step by step the reasoning, based on what is shown, that leads to this answer, "
        "then give the answer.",
    )
