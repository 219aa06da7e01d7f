"""CreativePair examples for Creative4U: the prompt, both creative images, the target answer, in both orders.

Every pair of the data set becomes two examples, creative A and B in one order and then swapped, joined by
`pair_key` and told apart by `swapped`: supervised fine-tuning sees each creative in both slots (a selector
must not learn "A usually wins"), and GRPO's consistency reward compares the two orders' verdicts. The first
order is the table's own pair: its label, deciding factor and rationale, whoever labelled it. The swapped
example mirrors the label, keeps the factor, and says the rationale for the swapped order: re-derived from
the creatives' design factors where the table's rationale is the synthetic world's own (`pair_rationale`
gives it back for the first order), else the table's text with its slot letters A and B exchanged.

Columns: pair_key, swapped, split, item_id, prompt (text), images (two paths: the first is "A"), creative_ids
(the same two, as ids), label, deciding_factor, completion (`<think>rationale</think><answer>X</answer>`,
the CoT-SFT target). `describe_examples` gives CoT-SFT single creatives in the same columns (split
"describe", one image, the creative's description as the completion, no verdict).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from adflow.contract import FACTORS, read_table
from adflow.creative.rewards import mirror
from adflow.data.world import PROTOCOL, SEGMENT_WEIGHTS, describe_creative, pair_rationale

QUESTION = "Which creative should this user be shown? Think it through, then answer A or B."
DESCRIBE = "Describe this creative by the protocol."
# without instructions (`creative_model.instructions` off): the same structure, the task named in a few words
SHORT_QUESTION, SHORT_DESCRIBE = "Answer A or B.", "Describe it."


COLUMNS = [
    "pair_key", "swapped", "split", "item_id", "prompt", "images", "creative_ids", "label", "deciding_factor",
    "completion",
]  # fmt: skip


def prompt(title: str, interests: str, instructions: bool = True) -> str:
    """The selector's question: the protocol, the user, the product, the two creatives (in image order).

    `instructions` False drops the protocol sentence and shortens the question: words every prompt shares,
    which a pretrained model follows and a model trained from scratch learns nothing from (config.py)."""
    head, question = (f"{PROTOCOL}\n", QUESTION) if instructions else ("", SHORT_QUESTION)
    return (
        f"{head}User: {interests}.\nProduct: {title}.\nCreative A: <image>\nCreative B: <image>\n{question}"
    )


def describe_prompt(instructions: bool = True) -> str:
    """A single creative to describe by the protocol (`describe_examples`)."""
    return (
        f"{PROTOCOL}\nCreative: <image>\n{DESCRIBE}"
        if instructions
        else f"Creative: <image>\n{SHORT_DESCRIBE}"
    )


def answer(rationale: str, label: str) -> str:
    return f"<think>{rationale}</think><answer>{label}</answer>"


_SLOT = re.compile(r"(?<![\w'])([AB])(?![\w'])")  # a standalone slot letter: "A:", "favours B."


def mirror_slots(text: str) -> str:
    """A rationale's slot letters exchanged ("A: ... B: ... favours A." -> "B: ... A: ... favours B."), for
    the pair asked in the other order. Only standalone capitals count (never the "a" of "a bargain hunter");
    a sentence opening with the article "A" would be exchanged too, which no protocol rationale does."""
    return _SLOT.sub(lambda m: mirror(m.group(1)), text)


def swapped_rationale(rationale: str, a: dict[str, object], b: dict[str, object], segment: str) -> str:
    """The rationale for the pair asked as (b, a). The world's rationale describes A first, then B, so merely
    exchanging letters would describe B first: where the table's text is the world's (both creatives
    annotated, a segment the world knows, and `pair_rationale` gives the table's text back) it is re-derived
    for the swapped order; any other rationale (people's, another generator's) has its letters exchanged."""
    annotated = all(pd.notna(f.get(k)) for f in (a, b) for k in FACTORS)
    if annotated and segment in SEGMENT_WEIGHTS and pair_rationale(a, b, segment) == rationale:
        return pair_rationale(b, a, segment)
    return mirror_slots(rationale)


def pair_examples(
    dataset: str | Path, splits: tuple[str, ...] = ("train",), instructions: bool = True
) -> pd.DataFrame:
    """Both orders of every CreativePair in `splits` (train / test / test_unseen)."""
    root = Path(dataset)
    if not (root / "creative_pairs.parquet").exists():
        raise FileNotFoundError(f"{root} has no creative_pairs table: Creative4U needs labelled pairs")
    pairs = read_table(root, "creative_pairs")
    pairs = pairs[pairs["split"].isin(splits)]
    creatives = read_table(root, "creatives").set_index("creative_id")
    titles = read_table(root, "items").set_index("item_id")["title"]
    factor_cols = [c for c in FACTORS if c in creatives.columns]
    rows = []
    for p in pairs.itertuples(index=False):
        fa = creatives.loc[p.creative_a, factor_cols].to_dict()
        fb = creatives.loc[p.creative_b, factor_cols].to_dict()
        text = prompt(str(titles.get(p.item_id, "")), str(p.user_interests), instructions)
        # the table's verdict as labelled; the swapped order mirrors it (same deciding factor, other slot)
        rationale = str(p.rationale)
        orders = (
            (p.creative_a, p.creative_b, str(p.label), rationale),
            (
                p.creative_b,
                p.creative_a,
                mirror(str(p.label)),
                swapped_rationale(rationale, fa, fb, str(p.user_segment)),
            ),
        )
        for swapped, (first, second, label, why) in enumerate(orders):
            rows.append(
                {
                    "pair_key": int(p.pair_id),
                    "swapped": bool(swapped),
                    "split": p.split,
                    "item_id": int(p.item_id),
                    "prompt": text,
                    "images": [
                        str(root / creatives.loc[first, "image_path"]),
                        str(root / creatives.loc[second, "image_path"]),
                    ],
                    "creative_ids": [int(first), int(second)],
                    "label": label,
                    "deciding_factor": str(p.deciding_factor),
                    "completion": answer(why, label),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def describe_examples(
    dataset: str | Path, exclude_items: set[int], instructions: bool = True
) -> pd.DataFrame:
    """One example per creative (products in `exclude_items` left out): the creative alone, described by the
    protocol in the rationale's own words ("product large, background busy, text crisp, warm theme."), as
    `split` "describe", in `pair_examples`' columns.

    Mixed into CoT-SFT, they train what the rationale's first half needs, seeing each creative's factors,
    through the tokens the language model reads: with pairs alone, a from-scratch selector described product
    prominence right 0.48 of the time (three levels) although its vision warm-up had fitted it (FIELD-NOTES)."""
    root = Path(dataset)
    creatives = read_table(root, "creatives")
    creatives = creatives[~creatives["item_id"].isin(exclude_items)]
    rows = [
        {
            "pair_key": -int(c.creative_id),  # never a pair's key
            "swapped": False,
            "split": "describe",
            "item_id": int(c.item_id),
            "prompt": describe_prompt(instructions),
            "images": [str(root / c.image_path)],
            "creative_ids": [int(c.creative_id)],
            "label": "",
            "deciding_factor": "",
            "completion": describe_creative(c._asdict()) + ".",
        }
        for c in creatives.itertuples(index=False)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def user_interests(dataset: str | Path) -> dict[int, str]:
    """A user's interest summary as the selector reads it: from the creative pairs where the user has one,
    else the segment alone (users table)."""
    root = Path(dataset)
    out: dict[int, str] = {}
    users = root / "users.parquet"
    if users.exists():
        u = read_table(root, "users")
        if "segment" in u.columns:
            out = {
                int(i): f"segment: {str(s).replace('_', ' ')}"
                for i, s in zip(u["user_id"], u["segment"], strict=True)
            }
    if (root / "creative_pairs.parquet").exists():
        p = read_table(root, "creative_pairs").drop_duplicates("user_id", keep="last")
        out |= {int(i): str(t) for i, t in zip(p["user_id"], p["user_interests"], strict=True)}
    return out
