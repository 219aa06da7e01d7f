"""Creative4U's rewards on hand-written completions: well-formed right, well-formed wrong, malformed, and the
special-token trap (tags that a real tokenizer holds as special tokens vanish when GRPO decodes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adflow.creative.rewards import (
    accuracy_reward,
    check_tags_are_text,
    consistency_reward,
    factor_reward,
    facts_reward,
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


def test_the_factor_reward_wants_one_factor_named() -> None:
    """Naming every factor as the deciding one earns nothing (it would match any pair's factor); one factor
    named, as the gold rationale does, earns it; and the held-out `factor_named` metric reads the same."""
    from adflow.creative.rewards import names_factor
    from adflow.data.world import FACTOR_TEXT

    every = (
        "<think>A: product large. B: product small. Deciding factor: product prominence and background "
        "clutter and text legibility and colour theme, which favours A.</think><answer>A</answer>"
    )
    assert factor_reward([every] * 4, deciding_factor=list(FACTOR_TEXT)) == [0.0] * 4
    two = "Deciding factor: text legibility or colour theme, which favours B."
    assert not names_factor(two, "legibility") and not names_factor(two, "theme")
    for factor, words in FACTOR_TEXT.items():
        think = f"A: product large. Deciding factor: {words}, which favours A."
        assert [names_factor(think, f) for f in FACTOR_TEXT] == [f == factor for f in FACTOR_TEXT]
    assert factor_reward([RIGHT, WRONG], deciding_factor=["clutter", "clutter"]) == [1.0, 0.0]
    assert factor_reward([WRONG], deciding_factor=["prominence"]) == [1.0]
    # a data set's own factor, outside the world's words, is still read
    assert names_factor("Deciding factor: price tag, which favours A.", "price tag")


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
    # every gold rationale states all eight facts in words the reader takes (else the facts reward is blind)
    assert facts_reward(comps, gold=comps) == [1.0] * len(ex)
    assert ex["prompt"].str.count("<image>").eq(2).all()


def test_pair_examples_on_the_world_are_the_ground_truths_both_orders(small_world: Path) -> None:
    """On the synthetic world the table's labels are the ground truth's: both orders come out as the ground
    truth says them (label, deciding factor, rationale for that order), as when they were derived from it."""
    from adflow.creative.data import answer, pair_examples
    from adflow.data.world import pair_rationale, pair_verdict

    ex = pair_examples(small_world, ("train", "test", "test_unseen"))
    creatives = pd.read_parquet(small_world / "creatives.parquet").set_index("creative_id")
    pairs = pd.read_parquet(small_world / "creative_pairs.parquet").set_index("pair_id")
    cols = ["prominence", "clutter", "legibility", "theme"]
    for row in ex.itertuples(index=False):
        first, second = (creatives.loc[c, cols].to_dict() for c in row.creative_ids)
        segment = pairs.at[row.pair_key, "user_segment"]
        label, deciding, _ = pair_verdict(first, second, segment)
        assert (row.label, row.deciding_factor) == (label, deciding)
        assert row.completion == answer(pair_rationale(first, second, segment), label)


def test_pair_examples_keep_the_tables_own_labels(small_world: Path, tmp_path: Path) -> None:
    """A data set labelled by someone else: its labels, deciding factors and rationales are used as given
    (not recomputed from the synthetic world's weights), the swapped order mirrors them, and a segment the
    world does not know or a creative without design factors is no error."""
    from adflow.creative.data import answer, pair_examples
    from adflow.data.world import pair_rationale

    for name in ("items", "creatives", "creative_pairs"):
        shutil.copy(small_world / f"{name}.parquet", tmp_path / f"{name}.parquet")
    pairs = pd.read_parquet(tmp_path / "creative_pairs.parquet")
    pairs = pairs[pairs["split"] == "train"].head(12).reset_index(drop=True)
    pairs["label"] = pairs["label"].map({"A": "B", "B": "A"})  # people disagreed with the world everywhere
    people = "Students skip busy pictures. A: cluttered. B: clean. Deciding factor: background clutter, which favours B."
    pairs.loc[:3, "user_segment"] = "students"  # a segment the world has no weights for
    pairs.loc[:3, ["label", "deciding_factor", "rationale"]] = ["B", "clutter", people]
    pairs.to_parquet(tmp_path / "creative_pairs.parquet", index=False)
    creatives = pd.read_parquet(tmp_path / "creatives.parquet")
    unannotated = int(pairs.at[5, "creative_b"])  # an imported creative without design factors
    creatives.loc[creatives["creative_id"] == unannotated, ["prominence", "theme"]] = [np.nan, None]
    creatives.to_parquet(tmp_path / "creatives.parquet", index=False)

    ex = pair_examples(tmp_path, ("train",))
    first, second = ex[~ex["swapped"]].set_index("pair_key"), ex[ex["swapped"]].set_index("pair_key")
    given = pairs.set_index("pair_id").loc[first.index]
    assert (first["label"] == given["label"]).all() and (
        first["deciding_factor"] == given["deciding_factor"]
    ).all()
    assert all(
        c == answer(r, y)
        for c, r, y in zip(first["completion"], given["rationale"], given["label"], strict=True)
    )
    assert (second["label"] == given["label"].map({"A": "B", "B": "A"})).all()
    assert (second["deciding_factor"] == given["deciding_factor"]).all()
    from adflow.creative.data import mirror_slots

    # people's rationale: the slot letters exchanged for the swapped order, nothing else
    swapped_people = "Students skip busy pictures. B: cluttered. A: clean. Deciding factor: background clutter, which favours A."
    assert mirror_slots(people) == swapped_people
    assert second.loc[given.index[:4], "completion"].tolist() == [answer(swapped_people, "A")] * 4
    # the world's own rationale (its creatives annotated) is said again for the swapped order
    cr = pd.read_parquet(small_world / "creatives.parquet").set_index("creative_id")
    cols = ["prominence", "clutter", "legibility", "theme"]
    k = given.index[4]
    a, b = (cr.loc[int(given.at[k, c]), cols].to_dict() for c in ("creative_a", "creative_b"))
    assert second.at[k, "completion"] == answer(
        pair_rationale(b, a, given.at[k, "user_segment"]), second.at[k, "label"]
    )
    # a creative without factors: the table's rationale with its letters exchanged
    k = given.index[5]
    assert second.at[k, "completion"] == answer(mirror_slots(given.at[k, "rationale"]), second.at[k, "label"])


def test_tournaments_without_ground_truth_run_unscored(
    small_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Held-out pairs of a segment the synthetic world does not know, or creatives without design factors:
    the tournament runs, its pick has no ground truth to be scored against (said in the log), and the
    best-creative measures count only the (user, item)s that have one."""
    from adflow.config import load_settings
    from adflow.creative import selector as S
    from components.training.creative.core import tournament_metrics, tournaments, truth_best

    for name in ("items", "creatives"):
        shutil.copy(small_world / f"{name}.parquet", tmp_path / f"{name}.parquet")
    (tmp_path / "images").symlink_to(small_world / "images")
    pairs = pd.read_parquet(small_world / "creative_pairs.parquet")
    held = (
        pairs[pairs["split"] == "test"].drop_duplicates(["user_id", "item_id"]).head(4).reset_index(drop=True)
    )
    held.loc[0, "user_segment"] = "students"
    held.to_parquet(tmp_path / "creative_pairs.parquet", index=False)
    creatives = pd.read_parquet(tmp_path / "creatives.parquet")
    bare = creatives["item_id"] == held.at[1, "item_id"]
    creatives.loc[bare, "clutter"] = np.nan  # an imported product without design factors
    creatives.to_parquet(tmp_path / "creatives.parquet", index=False)
    assert truth_best(creatives[bare], str(held.at[1, "user_segment"])) is None
    assert truth_best(creatives[creatives["item_id"] == held.at[0, "item_id"]], "students") is None

    monkeypatch.setattr(
        S, "generate", lambda m, p, prompts, *a, **k: ["<think>x</think><answer>A</answer>"] * len(prompts)
    )
    tour, examples = tournaments(load_settings("tiny"), tmp_path, None, None, 10)
    assert len(tour) == 4 and tour["best"].isna().tolist() == [True, True, False, False]
    said = capsys.readouterr().out
    assert "2 of 4 (user, item)s have no ground truth" in said and "no weights for: ['students']" in said
    assert "creatives without design factors" in said and examples[0]["best"] is None
    m = tournament_metrics(tour, tour["chosen"].tolist())
    assert m["tournament_n"] == 4 and m["tournament_scored_n"] == 2
    hit = (tour["chosen"] == tour["best"])[2:].mean()
    assert m["tournament_best_hit"] == pytest.approx(hit) and m["scorer_best_hit"] == pytest.approx(hit)
    assert m["scorer_agrees_with_tournament"] == 1.0


def test_described_levels_reads_each_creative_by_the_protocol() -> None:
    """The reasoning's description of each creative, read back: every factor's level per slot; a factor
    described twice over (two levels) or a slot never described counts as not said."""
    from adflow.creative.rewards import described_levels

    think = (
        "The user is a practical shopper put off by busy pictures. A: product large, background clean, "
        "text faint, cool theme. B: product medium, some clutter, text crisp, warm theme. "
        "Deciding factor: background clutter, which favours A."
    )
    assert described_levels(think) == {
        ("A", "prominence"): "product large",
        ("A", "clutter"): "background clean",
        ("A", "legibility"): "text faint",
        ("A", "theme"): "cool",
        ("B", "prominence"): "product medium",
        ("B", "clutter"): "some clutter",
        ("B", "legibility"): "text crisp",
        ("B", "theme"): "warm",
    }
    muddled = described_levels("A: product large, product small, background busy, dark theme.")
    assert ("A", "prominence") not in muddled and muddled[("A", "clutter")] == "background busy"
    assert muddled[("A", "theme")] == "dark" and not any(slot == "B" for slot, _ in muddled)


def test_fact_scores_against_the_gold_rationale() -> None:
    """Per factor, the share of (answer, creative) descriptions that match the gold rationale's level; a
    malformed answer describes nothing; `facts_all` needs all eight right."""
    import pandas as pd

    from components.training.creative.core import fact_scores

    def answer(a: str, b: str, label: str = "A") -> str:
        return f"<think>The user is x. A: {a}. B: {b}. Deciding factor: colour theme, which favours {label}.</think><answer>{label}</answer>"

    gold = answer(
        "product large, background clean, text faint, cool theme",
        "product small, some clutter, text crisp, warm theme",
    )
    right = gold
    one_off = answer(
        "product large, background busy, text faint, cool theme",
        "product small, some clutter, text crisp, warm theme",
        "B",
    )
    judged = pd.DataFrame({"output": [right, one_off, "no answer at all"], "completion": [gold] * 3})
    got = fact_scores(judged)
    assert got["facts_prominence"] == pytest.approx(4 / 6) and got["facts_legibility"] == pytest.approx(4 / 6)
    assert got["facts_clutter"] == pytest.approx(3 / 6) and got["facts_theme"] == pytest.approx(4 / 6)
    assert got["facts_all"] == pytest.approx(1 / 3)


def test_facts_reward_grades_what_the_reasoning_saw() -> None:
    """GRPO's graded reward: the share of the gold answer's eight facts stated alike, whatever the verdict;
    malformed, or a gold answer that states no facts, earns 0; a gold answer as chat messages is read too."""

    def answer(a: str, b: str, label: str = "A") -> str:
        return f"<think>The user is x. A: {a}. B: {b}. Deciding factor: colour theme, which favours {label}.</think><answer>{label}</answer>"

    gold = answer(
        "product large, background clean, text faint, cool theme",
        "product small, some clutter, text crisp, warm theme",
    )
    two_off = answer(
        "product large, background busy, text faint, cool theme",
        "product small, some clutter, text faint, warm theme",
    )
    muddled = answer(
        "product large, product small, background clean, text faint, cool theme",
        "product small, some clutter, text crisp, warm theme",
        "B",
    )
    chat = [{"role": "assistant", "content": [{"type": "text", "text": gold}]}]
    got = facts_reward(
        [gold, two_off, muddled, gold[:-3], gold],
        gold=[chat] * 4 + ["<think>no facts</think><answer>A</answer>"],
    )
    assert got == pytest.approx([1.0, 6 / 8, 7 / 8, 0.0, 0.0])


def test_describe_examples_one_per_creative_of_trained_products(small_world: Path) -> None:
    """Single creatives described by the protocol for CoT-SFT: one image, the rationale's own words for its
    factors, no held-out product's creative among them."""
    import pandas as pd

    from adflow.creative.data import describe_examples, pair_examples
    from adflow.data.world import describe_creative

    creatives = pd.read_parquet(small_world / "creatives.parquet").set_index("creative_id")
    unseen = {int(creatives["item_id"].iloc[0])}
    ex = describe_examples(small_world, unseen)
    assert len(ex) == int((~creatives["item_id"].isin(unseen)).sum()) and not ex["item_id"].isin(unseen).any()
    assert (ex["split"] == "describe").all() and ex["prompt"].str.count("<image>").eq(1).all()
    assert list(ex.columns) == list(pair_examples(small_world, ("train",)).columns)
    for row in ex.itertuples(index=False):
        (cid,) = row.creative_ids
        assert row.completion == describe_creative(creatives.loc[cid].to_dict()) + "."
        assert Path(row.images[0]).is_file() and row.images[0].endswith(creatives.at[cid, "image_path"])
    assert (ex["pair_key"] < 0).all()  # never joins a pair's two orders


def test_serving_gets_the_better_variant_that_clears_the_floor(tmp_path: Path) -> None:
    """The more accurate trained variant whose held-out accuracy less its 95% interval reaches the floor is
    served (equals: SFT+GRPO, the later stage); a coin-like selector is not, and then the creative service
    finds no selector to explain with."""
    from adflow.creative.choose import selector_folder
    from components.training.creative.core import choose_served

    def row(acc: float, ci: float = 0.03) -> dict[str, float]:
        return {"accuracy": acc, "accuracy_ci95": ci}

    assert choose_served({"sft": row(0.75), "sft_grpo": row(0.74)}, 0.6)[0] == "sft"
    assert choose_served({"sft": row(0.75), "sft_grpo": row(0.76)}, 0.6)[0] == "sft_grpo"
    assert choose_served({"sft": row(0.75), "sft_grpo": row(0.75)}, 0.6)[0] == "sft_grpo"
    assert choose_served({"sft": row(0.70)}, 0.6)[0] == "sft"  # grpo_steps=0: SFT only
    # the better one is too uncertain (few held-out pairs): the one that clears the floor is served
    assert choose_served({"sft": row(0.66, 0.02), "sft_grpo": row(0.68, 0.1)}, 0.6)[0] == "sft"
    # one letter for every pair (0.500): neither clears 0.6, and the reason names both and the setting
    served, why = choose_served({"sft": row(0.5), "sft_grpo": row(0.52)}, 0.6)
    assert served is None
    assert "SFT 0.500" in why and "SFT+GRPO 0.520" in why and "serve_min_accuracy 0.60" in why
    assert choose_served({"sft": row(0.5)}, 0.0)[0] == "sft"  # a floor of 0 serves whatever was trained
    # what the stage writes either way, as the creative service reads it
    (tmp_path / "selector").mkdir()
    (tmp_path / "creative.json").write_text(json.dumps({"served": None, "selector": "selector", "note": why}))
    assert selector_folder(tmp_path) is None
    (tmp_path / "creative.json").write_text(json.dumps({"served": "sft", "selector": "selector"}))
    assert selector_folder(tmp_path) == tmp_path / "selector"


def test_a_selector_its_stage_does_not_serve_is_refused_when_named_directly(tmp_path: Path) -> None:
    """The selector folder named directly serves only what its stage serves: a selector that failed the
    serving floor (creative.json `served` null) is refused with the stage's reason, not served one folder
    down; a served one, or a selector folder with no stage around it, is taken as it is."""
    from adflow.creative.choose import selector_folder

    sel = tmp_path / "selector"
    sel.mkdir()
    (sel / "selector.json").write_text("{}")
    assert selector_folder(sel) == sel  # a selector on its own (no stage's creative.json beside it)
    why = "no selector is served: held-out accuracy SFT 0.500 ± 0.030 does not clear serve_min_accuracy 0.60"
    (tmp_path / "creative.json").write_text(json.dumps({"served": None, "selector": "selector", "note": why}))
    with pytest.raises(ValueError, match=r"does not serve .*served: null.*serve_min_accuracy 0\.60"):
        selector_folder(sel)
    assert selector_folder(tmp_path) is None  # the stage folder: no selector, as before
    (tmp_path / "creative.json").write_text(json.dumps({"served": "sft", "selector": "selector"}))
    assert selector_folder(sel) == sel == selector_folder(tmp_path)


def test_accuracy_intervals_count_products_not_answers() -> None:
    """Answers about one product are right or wrong together: the interval treats products as the draws, so
    it widens when whole products move together and matches the textbook one when every answer is its own."""
    from adflow.metrics import clustered_mean

    x = np.array([1.0, 0.0] * 50)
    alone = clustered_mean(x, np.arange(100))
    assert alone["mean"] == 0.5
    # every row its own cluster: sqrt(p(1-p)/n) * sqrt(C/(C-1))
    assert alone["ci95"] == pytest.approx(1.96 * np.sqrt(0.25 / 100) * np.sqrt(100 / 99))
    # half right again, but each product's four answers agree (24 products): twice as wide
    together = clustered_mean(np.repeat([1.0, 0.0], 48), np.repeat(np.arange(24), 4))
    assert together["ci95"] == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 96) * np.sqrt(24 / 23))
    # a product whose answers split evenly adds nothing to the spread
    assert clustered_mean(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0, 0, 1, 1]))["ci95"] == 0.0
    assert clustered_mean(np.ones(5), np.zeros(5))["ci95"] == float("inf")  # one product: no spread known


def test_grpo_gain_is_paired_on_the_same_answers() -> None:
    """GRPO against SFT on the same held-out answers: the gain, its interval, what turned right and wrong, and
    the reading (beats / worse / no measurable difference); answers in another order are refused."""
    from components.training.creative.core import grpo_gain_line, paired_gain

    n = 200
    base = pd.DataFrame(
        {"pair_key": np.repeat(np.arange(n // 2), 2), "item_id": np.repeat(np.arange(n // 4), 4)}
    )
    rng = np.random.default_rng(0)
    sft = base.assign(correct=rng.random(n) < 0.7)
    # GRPO turns 30 of SFT's wrong answers right and breaks 2 right ones
    flip = sft["correct"].to_numpy().copy()
    wrong, right = np.flatnonzero(~flip), np.flatnonzero(flip)
    flip[wrong[:30]], flip[right[:2]] = True, False
    g = paired_gain(sft, base.assign(correct=flip))
    assert g["gain"] == pytest.approx(28 / n) and (g["fixed"], g["broken"]) == (30, 2)
    assert 0 < g["gain_ci95"] < g["gain"]
    m = {"grpo_gain": g["gain"], "grpo_gain_ci95": g["gain_ci95"], "grpo_fixed": 30, "grpo_broken": 2}
    assert grpo_gain_line(m).endswith("GRPO beats SFT") and "+0.140" in grpo_gain_line(m)
    assert grpo_gain_line(m | {"grpo_gain": -0.14}).endswith("GRPO is worse than SFT")
    assert grpo_gain_line(m | {"grpo_gain": 0.01}).endswith("no measurable difference")
    # the same answers: no gain, no spread
    same = paired_gain(sft, sft)
    assert same["gain"] == 0 and same["gain_ci95"] == 0 and same["fixed"] == same["broken"] == 0
    with pytest.raises(ValueError, match="same held-out examples"):
        paired_gain(sft, sft.iloc[::-1].reset_index(drop=True))
    with pytest.raises(ValueError, match="same held-out examples"):
        paired_gain(sft, sft.iloc[:-2])


def test_a_measure_with_nothing_to_measure_is_nan_and_reads_n_a(tmp_path: Path) -> None:
    """No unseen products among the held-out pairs, no tournament with a ground truth: those measures are
    NaN (MLflow keeps NaN), not 0.0 that reads as "always wrong", and the report says "n/a"."""
    from components.training.creative.core import scores, tournament_metrics, write_report

    gold = "<think>A: product large, background clean, text faint, cool theme. B: product small, some clutter, text crisp, warm theme. Deciding factor: colour theme, which favours A.</think><answer>A</answer>"
    judged = pd.DataFrame(
        {
            "pair_key": [1, 1, 2, 2],
            "swapped": [False, True, False, True],
            "split": ["test"] * 4,  # seen products only
            "item_id": [5, 5, 6, 6],
            "label": ["A", "B", "A", "B"],
            "answer": ["A", "B", "B", "B"],
            "well_formed": True,
            "names_factor": [True, False, False, False],
            "output": [gold, "", "", ""],
            "completion": [gold] * 4,
        }
    ).assign(correct=lambda d: d["answer"] == d["label"])
    row = scores(judged)
    assert row["accuracy_seen_products"] == 0.75 and np.isnan(row["accuracy_unseen_products"])
    assert row["factor_named_when_right"] == pytest.approx(1 / 3)
    wrong = scores(judged.assign(correct=False))
    assert np.isnan(wrong["factor_named_when_right"])  # no right verdict: nothing to say about its reason

    tour = pd.DataFrame(
        {"user_id": [1, 2], "item_id": [5, 6], "segment": ["practical"] * 2, "split": ["test"] * 2, "n": [3, 3],
         "chosen": [10, 20], "best": [10, 21], "seconds": [0.1, 0.1]}
    ).astype({"best": "Int64"})  # fmt: skip
    m = tournament_metrics(tour, [10, 21])
    assert m["tournament_best_hit"] == 0.5 and m["scorer_best_hit"] == 1.0
    assert np.isnan(m["tournament_best_hit_unseen"])  # no unseen product among them
    none = tournament_metrics(tour.assign(best=pd.array([None, None], dtype="Int64")), [10, 21])
    assert none["tournament_scored_n"] == 0 and none["scorer_agrees_with_tournament"] == 0.5
    assert all(np.isnan(none[k]) for k in ("tournament_best_hit", "tournament_chance", "scorer_best_hit"))

    metrics = none | {
        "creatives_per_item": 3.0,
        "scorer_distill_pairs": 40.0,
        "scorer_agreement_with_selector": 0.8,
        "scorer_accuracy": 0.7,
        "scorer_best_of_n_ms": 0.01,
    }
    evaluation = {
        "table": {"sft": row},
        "metrics": metrics,
        "measured": "sft",
        "serving_note": "SFT is served",
        "tournament_examples": [],
    }
    write_report(tmp_path, evaluation, [])
    report = (tmp_path / "report.md").read_text()
    assert "nan" not in report.lower().replace("n/a", "")
    assert "| 0.750 | n/a |" in report and "picked n/a ± n/a of the time" in report
    assert "on unseen products n/a" in report and "2 of them, 0 with a ground truth" in report
