"""Creative4U's verdict format and its GRPO rewards, as plain functions (TRL's reward-function signature).

A selector's answer is `<think>reasoning</think><answer>A</answer>`, nothing else around it. TRL calls every
reward with the batch's completions plus each dataset column as a keyword argument (one value per
completion) and wants one float per completion:

- `format_reward`: 1 when the whole answer parses (one think block, then one answer block with A or B);
- `accuracy_reward`: 1 when the verdict equals the pair's `label` (0 for a malformed answer);
- `factor_reward`: 1 when the reasoning names the pair's `deciding_factor` (its words, e.g. "background
  clutter") and no other one, so a right verdict for the wrong reason earns less;
- `facts_reward`: the share of the gold rationale's facts (each creative's level on each factor of the
  protocol, `gold` column) that the reasoning states alike: a graded signal on what the selector saw;
- `consistency_reward`: position consistency. Every pair is asked in both orders (`pair_key` joins them,
  `swapped` tells them apart); a verdict earns the share of the other order's completions in the same batch
  that mirror it (A here, B there): the choice must follow the creative, not the slot.

The tags are plain text on purpose: GRPO decodes completions with `skip_special_tokens=True`, so tags made
special tokens vanish from what the rewards see and every reward is 0 (FIELD-NOTES). `check_tags_are_text`
refuses such a tokenizer before training starts.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adflow.data.world import FACTOR_TEXT, LEVELS, THEME_NAMES

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_VERDICT = re.compile(r"\s*<think>(?P<think>.+?)</think>\s*<answer>\s*(?P<answer>[AB])\s*</answer>\s*", re.S)


@dataclass(frozen=True)
class Verdict:
    think: str
    answer: str  # "A" or "B"


def text_of(completion: Any) -> str:
    """TRL passes plain strings, or chat messages ([{"role": "assistant", "content": ...}]) for chat data."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # multimodal message parts
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return str(content)
    return str(completion)


def parse(completion: Any) -> Verdict | None:
    """The verdict of a well-formed answer, or None (missing or repeated tags, text outside, no A/B)."""
    text = text_of(completion)
    m = _VERDICT.fullmatch(text)
    if m is None or any(text.count(t) != 1 for t in TAGS):
        return None
    return Verdict(m["think"].strip(), m["answer"])


def format_reward(completions: Sequence[Any], **_: Any) -> list[float]:
    return [1.0 if parse(c) else 0.0 for c in completions]


def accuracy_reward(completions: Sequence[Any], label: Sequence[str], **_: Any) -> list[float]:
    out = []
    for c, y in zip(completions, label, strict=True):
        v = parse(c)
        out.append(1.0 if v is not None and v.answer == y else 0.0)
    return out


def names_factor(think: str, factor: str) -> bool:
    """Whether reasoning names a factor as the deciding one ("deciding factor: background clutter"), and
    that one only: naming every factor there ("product prominence and background clutter and ...") would
    otherwise earn the factor reward whatever the deciding factor was."""
    m = re.search(r"deciding factor:\s*([^,.]+)", think, re.I)
    if m is None:
        return False
    said = m.group(1).lower()
    words = FACTOR_TEXT | {factor: FACTOR_TEXT.get(factor, factor)}  # a data set's own factor names too
    return [f for f, w in words.items() if w.lower() in said] == [factor]


def factor_reward(completions: Sequence[Any], deciding_factor: Sequence[str], **_: Any) -> list[float]:
    out = []
    for c, f in zip(completions, deciding_factor, strict=True):
        v = parse(c)
        out.append(1.0 if v is not None and names_factor(v.think, f) else 0.0)
    return out


def described_levels(think: str) -> dict[tuple[str, str], str]:
    """What reasoning says about each creative, by the protocol's words: {(slot, factor): level}.

    The rationale assesses each creative on its own ("A: product large, background busy, text crisp, warm
    theme. B: ..."); a slot's description runs from "A:" (or "B:") to the next full stop. A factor is read
    only when exactly one of its levels' words is there, so a muddled description counts as not said."""
    out: dict[tuple[str, str], str] = {}
    for slot in ("A", "B"):
        m = re.search(rf"\b{slot}:\s*([^.]*)", think)
        if m is None:
            continue
        text = m.group(1).lower()
        for factor, (_, names) in LEVELS.items():
            said = [n for n in names if n in text]
            if len(said) == 1:
                out[(slot, factor)] = said[0]
        themes = [t for t in THEME_NAMES if f"{t} theme" in text]
        if len(themes) == 1:
            out[(slot, "theme")] = themes[0]
    return out


def facts_right(answer: Any, gold: Any) -> list[tuple[str, bool]]:
    """(factor, stated alike) for each fact the gold answer states about either creative; a malformed
    answer states nothing, so all its facts count as wrong."""
    said_v, gold_v = parse(answer), parse(gold)
    said = described_levels(said_v.think) if said_v else {}
    truth = described_levels(gold_v.think) if gold_v else {}
    return [(factor, said.get((slot, factor)) == level) for (slot, factor), level in truth.items()]


def facts_reward(completions: Sequence[Any], gold: Sequence[Any], **_: Any) -> list[float]:
    out = []
    for c, g in zip(completions, gold, strict=True):
        right = facts_right(c, g)
        out.append(sum(ok for _, ok in right) / len(right) if right else 0.0)
    return out


def mirror(answer: str) -> str:
    return {"A": "B", "B": "A"}[answer]


def consistency_reward(
    completions: Sequence[Any], pair_key: Sequence[Any], swapped: Sequence[bool], **_: Any
) -> list[float]:
    """Share of the other order's completions (same pair, same batch) whose verdict mirrors this one; a
    completion whose pair's other order is not in the batch gets 0.5 (no evidence either way)."""
    verdicts = [parse(c) for c in completions]
    by_side: dict[tuple[Any, bool], list[str | None]] = defaultdict(list)
    for v, key, sw in zip(verdicts, pair_key, swapped, strict=True):
        by_side[(key, bool(sw))].append(v.answer if v else None)
    out = []
    for v, key, sw in zip(verdicts, pair_key, swapped, strict=True):
        other = by_side.get((key, not bool(sw)), [])
        if v is None:
            out.append(0.0)
        elif not other:
            out.append(0.5)
        else:
            out.append(sum(o is not None and o == mirror(v.answer) for o in other) / len(other))
    return out


REWARDS = (format_reward, accuracy_reward, factor_reward, facts_reward, consistency_reward)


def check_tags_are_text(tokenizer: Any) -> None:
    """Refuse a tokenizer that holds the answer tags as special tokens: decoded with
    skip_special_tokens=True (as GRPO does) the tags disappear and every reward would be 0."""
    special = set(getattr(tokenizer, "all_special_tokens", []))
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special |= {str(t) for t in added.values() if getattr(t, "special", False)}
    clash = [t for t in TAGS if t in special]
    if clash:
        raise ValueError(
            f"the answer tags {clash} are special tokens of this tokenizer: GRPO decodes completions with "
            "skip_special_tokens=True, so they would vanish and every reward would be 0; keep them plain text"
        )
