"""Creative4U's rewards on hand-written completions: well-formed right, well-formed wrong, malformed, and the
special-token trap (tags that a real tokenizer holds as special tokens vanish when GRPO decodes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adflow.creative.rewards import (
    accuracy_reward,
    check_tags_are_text,
    consistency_reward,
    factor_reward,
    format_reward,
    parse,
)

RIGHT = (
    "<think>The user is a practical shopper put off by busy pictures. Background clutter: A is much cleaner. "
    "Deciding factor: background clutter, which favours A.</think><answer>A</answer>"
)
WRONG = (
    "<think>Product prominence: B shows the product slightly larger. "
    "Deciding factor: product prominence, which favours B.</think><answer>B</answer>"
)
MALFORMED = {
    "no think": "<answer>A</answer>",
    "no answer": "<think>A is cleaner.</think>",
    "answer first": "<answer>A</answer><think>A is cleaner.</think>",
    "text after": RIGHT + " I am sure.",
    "two answers": "<think>x</think><answer>A</answer><answer>B</answer>",
    "not A or B": "<think>x</think><answer>C</answer>",
    "both": "<think>x</think><answer>A or B</answer>",
    "unclosed": "<think>x<answer>A</answer>",
    "empty think": "<think></think><answer>A</answer>",
}


def test_well_formed_right_and_wrong() -> None:
    comps = [RIGHT, WRONG]
    label = ["A", "A"]
    assert format_reward(comps) == [1.0, 1.0]
    assert accuracy_reward(comps, label=label) == [1.0, 0.0]
    # the right answer names the true deciding factor; the wrong one names another
    assert factor_reward(comps, deciding_factor=["clutter", "clutter"]) == [1.0, 0.0]
    v = parse(RIGHT)
    assert v is not None and v.answer == "A" and v.think.startswith("The user is")


def test_whitespace_and_chat_messages_are_accepted() -> None:
    spaced = "\n<think> A is cleaner. </think>\n<answer> B </answer>\n"
    assert format_reward([spaced]) == [1.0] and accuracy_reward([spaced], label=["B"]) == [1.0]
    chat = [{"role": "assistant", "content": RIGHT}]
    assert format_reward([chat]) == [1.0] and accuracy_reward([chat], label=["A"]) == [1.0]


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_earns_nothing(name: str) -> None:
    c = MALFORMED[name]
    assert parse(c) is None
    assert format_reward([c]) == [0.0]
    assert accuracy_reward([c], label=["A"]) == [0.0]  # even when "A" appears in it
    assert factor_reward([c], deciding_factor=["clutter"]) == [0.0]
    assert consistency_reward([c, WRONG], pair_key=[1, 1], swapped=[False, True]) == [0.0, 0.0]


def test_consistency_follows_the_creative_not_the_slot() -> None:
    a, b = RIGHT, WRONG  # verdicts A and B
    # pair 1 asked in both orders: A then (swapped) B is consistent; A then A follows the slot
    assert consistency_reward([a, b], pair_key=[1, 1], swapped=[False, True]) == [1.0, 1.0]
    assert consistency_reward([a, a], pair_key=[1, 1], swapped=[False, True]) == [0.0, 0.0]
    # a group of 2 completions per order: each earns the share of mirrored verdicts on the other side
    got = consistency_reward([a, b, b, b], pair_key=[7] * 4, swapped=[False, False, True, True])
    assert got == [1.0, 0.0, 0.5, 0.5]
    # without the other order in the batch there is no evidence either way
    assert consistency_reward([a], pair_key=[3], swapped=[False]) == [0.5]


def test_special_token_trap() -> None:
    """Tags registered as special tokens are dropped by skip_special_tokens=True decoding (as in GRPO): the
    decoded answer no longer parses, every reward is 0, and the guard refuses such a tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        [RIGHT, WRONG] * 20,
        trainers.BpeTrainer(
            vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        ),
    )
    from tokenizers import decoders

    tok.decoder = decoders.ByteLevel()
    plain = PreTrainedTokenizerFast(tokenizer_object=tok)
    check_tags_are_text(plain)  # tags as text: fine
    ids = plain(RIGHT)["input_ids"]
    assert format_reward([plain.decode(ids, skip_special_tokens=True)]) == [1.0]

    trapped = PreTrainedTokenizerFast(tokenizer_object=tok)
    trapped.add_special_tokens(
        {"additional_special_tokens": ["<think>", "</think>", "<answer>", "</answer>"]}
    )
    with pytest.raises(ValueError, match="special tokens"):
        check_tags_are_text(trapped)
    decoded = trapped.decode(trapped(RIGHT)["input_ids"], skip_special_tokens=True)
    assert "<answer>" not in decoded and "A" in decoded
    assert format_reward([decoded]) == [0.0] and accuracy_reward([decoded], label=["A"]) == [0.0]


def test_pair_examples_both_orders(small_world: Path) -> None:
    """Every CreativePair in both orders: the label mirrors, the deciding factor stays, the logged label and
    rationale are those of the first order, and the SFT target earns every reward."""
    import pandas as pd

    from adflow.creative.data import pair_examples

    ex = pair_examples(small_world, ("train", "test", "test_unseen"))
    pairs = pd.read_parquet(small_world / "creative_pairs.parquet").set_index("pair_id")
    assert len(ex) == 2 * len(pairs) and set(ex["split"]) <= {"train", "test", "test_unseen"}
    first, second = ex[~ex["swapped"]].set_index("pair_key"), ex[ex["swapped"]].set_index("pair_key")
    assert (first["label"] == pairs.loc[first.index, "label"]).all()
    assert (second["label"] == first.loc[second.index, "label"].map({"A": "B", "B": "A"})).all()
    assert (second["deciding_factor"] == first.loc[second.index, "deciding_factor"]).all()
    assert all(pairs.at[k, "rationale"] in c for k, c in first["completion"].items())
    assert all(
        a[0] == b[1] and a[1] == b[0]
        for a, b in zip(first["images"], second.loc[first.index, "images"], strict=True)
    )
    assert all(Path(p).is_file() for p in ex["images"].iloc[0])
    comps = ex["completion"].tolist()
    kw = {c: ex[c].tolist() for c in ("label", "deciding_factor", "pair_key", "swapped")}
    assert format_reward(comps) == [1.0] * len(ex)
    assert accuracy_reward(comps, **kw) == [1.0] * len(ex)
    assert factor_reward(comps, **kw) == [1.0] * len(ex)
    assert consistency_reward(comps, **kw) == [1.0] * len(ex)
    assert ex["prompt"].str.count("<image>").eq(2).all()
