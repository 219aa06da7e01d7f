"""Creative4U's selector, tournament and fast scorer on the small world (the stage itself runs in
test_pipeline's end-to-end run): the processor TRL calls, generation, save/load, the protocol's rationale,
tie-breaking, and distillation recovering a known preference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from adflow.config import load_settings
from adflow.creative import choose
from adflow.creative import selector as S
from adflow.creative.data import pair_examples
from adflow.creative.rewards import check_tags_are_text, parse
from adflow.data.world import FACTOR_TEXT, LEVELS, SEGMENTS, appeal, describe_creative, pair_rationale


@pytest.fixture(scope="module")
def tiny(small_world: Path) -> tuple[Any, Any, pd.DataFrame]:
    s = load_settings("tiny")
    ex = pair_examples(small_world, ("train", "test", "test_unseen"), s.creative_model.instructions)
    proc = S.SelectorProcessor.build(s.creative_model, S.corpus(ex[ex["split"] == "train"]))
    torch.manual_seed(0)
    return S.build_selector(s.creative_model, proc), proc, ex


def test_processor_expands_both_images_and_keeps_tags_text(tiny: tuple[Any, Any, pd.DataFrame]) -> None:
    _, proc, ex = tiny
    check_tags_are_text(proc.tokenizer)  # the verdict tags survive skip_special_tokens decoding
    row = ex.iloc[0]
    msg = S.user_message(row["prompt"])
    assert [p["type"] for p in msg[0]["content"]].count("image") == 2
    text = proc.apply_chat_template([msg], add_generation_prompt=True, tokenize=False)[0]
    assert text.count("<|image_pad|>") == 2 and text.endswith("<|im_start|>assistant\n")
    images = [S.load_image(p, 32) for p in row["images"]]
    batch = proc(text=[text], images=[images], return_tensors="pt")
    per_image = int(batch["image_grid_thw"][0].prod()) // 4  # 2x2 patches merge into one LLM token
    assert int((batch["input_ids"] == proc.image_pad).sum()) == 2 * per_image
    assert int(batch["mm_token_type_ids"].sum()) == 2 * per_image
    # phrase tokens: the whole target answer is a few dozen tokens, and decodes back exactly
    ids = proc.tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
    assert len(ids) < 60 and proc.tokenizer.decode(ids) == row["completion"]
    # the chat template's role words are tokens of their own (the tokenizer saw them as the template renders)
    assert len(proc.tokenizer("assistant\n", add_special_tokens=False)["input_ids"]) == 1


def test_prompt_without_instructions_keeps_its_structure(small_world: Path) -> None:
    """`creative_model.instructions` off (tiny): the same pairs, user, product and creatives; no protocol
    sentence, a short question; single creatives likewise."""
    from adflow.creative.data import SHORT_DESCRIBE, SHORT_QUESTION, describe_examples
    from adflow.data.world import PROTOCOL

    full, terse = (pair_examples(small_world, ("train",), flag) for flag in (True, False))
    assert full.drop(columns="prompt").equals(terse.drop(columns="prompt"))
    assert (
        full["prompt"].str.startswith(PROTOCOL).all() and not terse["prompt"].str.contains("Protocol").any()
    )
    assert terse["prompt"].str.endswith("\n" + SHORT_QUESTION).all()
    rest = full["prompt"].str.slice(len(PROTOCOL) + 1).str.rsplit("\n", n=1).str[0]
    assert (rest == terse["prompt"].str.rsplit("\n", n=1).str[0]).all()  # user, product, creatives unchanged
    assert (terse["prompt"].str.len() < 0.6 * full["prompt"].str.len()).all()
    described = describe_examples(small_world, set(), instructions=False)
    assert (described["prompt"] == f"Creative: <image>\n{SHORT_DESCRIBE}").all()
    assert describe_examples(small_world, set())["prompt"].str.startswith(PROTOCOL).all()


def test_chooser_asks_as_the_selector_was_trained(
    tiny: tuple[Any, Any, pd.DataFrame], small_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving's tournament builds the prompt the way the saved selector was trained (its saved config)."""
    from adflow.data.world import PROTOCOL

    model, proc, _ = tiny
    asked: list[str] = []

    def fake_generate(m: Any, p: Any, prompts: Any, *a: Any, **k: Any) -> list[str]:
        asked.extend(part["text"] for msg in prompts for part in msg[0]["content"] if part["type"] == "text")
        return ["<think>x</think><answer>A</answer>"] * len(prompts)

    monkeypatch.setattr(S, "generate", fake_generate)
    cr = pd.read_parquet(small_world / "creatives.parquet")
    item = int(cr["item_id"].value_counts().index[0])
    cfg = load_settings("tiny").creative_model
    for flag in (False, True):
        asked.clear()
        S.save_selector(
            model,
            proc,
            tmp_path / str(flag),
            {"config": cfg.model_copy(update={"instructions": flag}).model_dump()},
        )
        choose.Chooser(tmp_path / str(flag), small_world).choose(0, item)
        assert asked and any(PROTOCOL in t for t in asked) == flag
    # a selector saved before the setting existed was trained with the instructions
    meta = cfg.model_dump()
    del meta["instructions"]
    S.save_selector(model, proc, tmp_path / "old", {"config": meta})
    asked.clear()
    choose.Chooser(tmp_path / "old", small_world).choose(0, item)
    assert any(PROTOCOL in t for t in asked)


def test_generation_and_save_load_roundtrip(tiny: tuple[Any, Any, pd.DataFrame], tmp_path: Path) -> None:
    model, proc, ex = tiny
    recs = S.to_records(ex.head(3), 32, with_completion=False)
    prompts, images = [r["prompt"] for r in recs], [r["images"] for r in recs]
    out = S.generate(model, proc, prompts, images, max_new_tokens=8, batch_size=2)
    assert len(out) == 3 and all(isinstance(o, str) for o in out)
    S.save_selector(model, proc, tmp_path / "sel", {"variant": "test"})
    again, proc2, meta = S.load_selector(tmp_path / "sel")
    assert meta["variant"] == "test"
    assert S.generate(again, proc2, prompts, images, max_new_tokens=8, batch_size=3) == out


def test_rationale_describes_each_creative_then_names_the_deciding_factor() -> None:
    a = {"prominence": 0.9, "clutter": 0.1, "legibility": 0.5, "theme": "warm"}
    b = {"prominence": 0.3, "clutter": 0.9, "legibility": 0.9, "theme": "cool"}
    text = pair_rationale(a, b, "practical")
    assert "A: product large, background clean, text readable, warm theme." in text
    assert "B: product small, background busy, text crisp, cool theme." in text
    assert text.endswith(f"Deciding factor: {FACTOR_TEXT['clutter']}, which favours A.")
    # every level boundary: just below is the lower word, at the bound the next one
    for factor, (bounds, names) in LEVELS.items():
        for k, bound in enumerate(bounds):
            low, high = dict(a, **{factor: bound - 1e-6}), dict(a, **{factor: bound})
            assert names[k] in describe_creative(low) and names[k + 1] in describe_creative(high)


def _oracle_generate(creatives: pd.DataFrame, segment: str) -> Any:
    """A hand-written perfect selector: answers from the ground truth's appeal (images carry the id)."""
    app = dict(
        zip(
            creatives["creative_id"],
            appeal(
                *(creatives[c].to_numpy() for c in ("prominence", "clutter", "legibility", "theme")), segment
            ),
            strict=True,
        )
    )

    def generate(model: Any, processor: Any, prompts: Any, images: Any, *a: Any, **k: Any) -> list[str]:
        return [f"<think>x</think><answer>{'A' if app[i] > app[j] else 'B'}</answer>" for i, j in images]

    return generate


def test_tournament_picks_the_best_and_breaks_ties_fairly(
    small_world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cr = pd.read_parquet(small_world / "creatives.parquet")
    hits = 0
    for item in cr["item_id"].unique()[:10]:
        c = cr[cr["item_id"] == item]
        # the "image" is the creative id itself, so the oracle can look it up
        monkeypatch.setattr(S, "generate", _oracle_generate(c, "practical"))
        choice = choose.tournament(None, None, "t", "u", [(i, i) for i in c["creative_id"]], 8)
        app = appeal(
            *(c[k].to_numpy() for k in ("prominence", "clutter", "legibility", "theme")), "practical"
        )
        hits += choice.creative_id == int(c["creative_id"].iloc[int(np.argmax(app))])
        assert choice.points[choice.creative_id] == 2 * (len(c) - 1)  # every game, in both orders
    assert hits == 10
    # a selector that always answers A ties every creative: the pick is a seeded draw, not "the first one"
    monkeypatch.setattr(
        S, "generate", lambda m, p, prompts, *a, **k: ["<think>x</think><answer>A</answer>"] * len(prompts)
    )
    ids = [(1, 1), (2, 2), (3, 3)]
    picks = {choose.tournament(None, None, "t", "u", ids, 8, seed=s).creative_id for s in range(20)}
    assert picks == {1, 2, 3}


def _ranked_generate(quality: dict[int, int]) -> Any:
    """A selector that prefers the better creative by `quality` and says, in slots, which one it saw where
    (the "image" is the creative id)."""

    def generate(m: Any, p: Any, prompts: Any, images: Any, *a: Any, **k: Any) -> list[str]:
        out = []
        for a_, b_ in images:
            win = "A" if quality[a_] > quality[b_] else "B"
            out.append(f"<think>A: img {a_}. B: img {b_}. favours {win}.</think><answer>{win}</answer>")
        return out

    return generate


def test_explanation_is_the_game_against_the_runner_up_with_its_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rationale explains the winner's game against the runner-up (not against the weakest creative),
    from the order with the winner as "A", and says which creative was "A" and which "B" in that game."""
    monkeypatch.setattr(S, "generate", _ranked_generate({10: 3, 20: 2, 30: 1}))
    for order in ([10, 20, 30], [30, 20, 10], [20, 30, 10]):
        ch = choose.tournament(None, None, "t", "u", [(i, i) for i in order], 8)
        assert ch.creative_id == 10 and (ch.explained_a, ch.explained_b) == (10, 20)
        assert ch.explanation == "A: img 10. B: img 20. favours A."
    # the winner beat the runner-up only as "B" (it won as "A" against the last one): the game against the
    # runner-up is explained, with its slots
    fair = _ranked_generate({10: 3, 20: 2, 30: 1})
    rigged = {(10, 20): "B", (20, 30): "B"}  # 10 loses to 20 as "A"; 20 loses to 30 as "A"

    def generate(m: Any, p: Any, prompts: Any, images: Any, *a: Any, **k: Any) -> list[str]:
        out = fair(m, p, prompts, images)
        for n, pair in enumerate(images):
            if (win := rigged.get(tuple(pair))) is not None:
                out[n] = (
                    f"<think>A: img {pair[0]}. B: img {pair[1]}. favours {win}.</think><answer>{win}</answer>"
                )
        return out

    monkeypatch.setattr(S, "generate", generate)
    ch = choose.tournament(None, None, "t", "u", [(10, 10), (20, 20), (30, 30)], 8)
    assert ch.creative_id == 10 and ch.points == {10: 3.0, 20: 2.0, 30: 1.0}
    assert (ch.explained_a, ch.explained_b) == (20, 10) and ch.explanation.startswith("A: img 20. B: img 10.")
    # nothing to explain: no game
    monkeypatch.setattr(S, "generate", lambda m, p, prompts, *a, **k: ["garbled"] * len(prompts))
    ch = choose.tournament(None, None, "t", "u", [(1, 1), (2, 2)], 8)
    assert ch.explanation == "no well-formed verdict favoured it" and ch.explained_a is ch.explained_b is None


def test_scorer_distils_a_known_preference(small_world: Path) -> None:
    """Verdicts drawn from a known Bradley-Terry model (per segment) are distilled back: the fitted scorer
    orders creatives like the truth and agrees with held-out verdicts."""
    cr = pd.read_parquet(small_world / "creatives.parquet")
    rng = np.random.default_rng(0)
    ia, ib = rng.integers(0, len(cr), 4000), rng.integers(0, len(cr), 4000)
    a, b = cr.iloc[ia].reset_index(drop=True), cr.iloc[ib].reset_index(drop=True)
    segs = rng.choice(np.array(SEGMENTS), 4000)
    truth = np.array(
        [
            appeal(*(r[k] for k in ("prominence", "clutter", "legibility", "theme")), s)
            for r, s in zip(a.to_dict("records"), segs, strict=True)
        ]
    )
    truth_b = np.array(
        [
            appeal(*(r[k] for k in ("prominence", "clutter", "legibility", "theme")), s)
            for r, s in zip(b.to_dict("records"), segs, strict=True)
        ]
    )
    p = 1 / (1 + np.exp(-4 * (truth - truth_b)))
    wins = (rng.random(4000) < p).astype(np.float32)
    scorer = choose.fit_scorer(a[:3000], b[:3000], segs[:3000], wins[:3000], epochs=100)
    pred = scorer.p_first(a[3000:], b[3000:], segs[3000:].tolist()) >= 0.5
    assert np.mean(pred == (truth[3000:] > truth_b[3000:])) > 0.9
    # the per-segment weights differ the way the world's do: the practical shopper minds clutter most
    w = {k: np.asarray(v) for k, v in scorer.weights.items()}
    assert w["practical"][1] < w["brand_lover"][1] < 0 and w["bargain_hunter"][2] > w["brand_lover"][2]
    path = Path(small_world).parent / "scorer_test.json"
    scorer.save(path)
    assert choose.FastScorer.load(path).weights == scorer.weights
    path.unlink()


def test_parse_of_generated_answers_is_what_rewards_read(tiny: tuple[Any, Any, pd.DataFrame]) -> None:
    _, proc, ex = tiny
    # the SFT target, through the tokenizer and back as GRPO decodes it, still parses to its label
    for row in ex.head(20).itertuples():
        ids = proc.tokenizer(row.completion + "<|im_end|>", add_special_tokens=False)["input_ids"]
        text = proc.tokenizer.decode(ids, skip_special_tokens=True)
        v = parse(text)
        assert v is not None and v.answer == row.label


def test_user_interests_from_pairs_else_segment(small_world: Path) -> None:
    from adflow.creative.data import user_interests

    got = user_interests(small_world)
    pairs = pd.read_parquet(small_world / "creative_pairs.parquet")
    users = pd.read_parquet(small_world / "users.parquet")
    with_pair = int(pairs["user_id"].iloc[0])
    assert got[with_pair] == pairs.loc[pairs["user_id"] == with_pair, "user_interests"].iloc[-1]
    without = sorted(set(users["user_id"]) - set(pairs["user_id"]))
    if without:
        seg = users.set_index("user_id").loc[without[0], "segment"].replace("_", " ")
        assert got[int(without[0])] == f"segment: {seg}"
    assert set(got) == set(users["user_id"].astype(int))


def _sft_trainer(model: Any, proc: Any, records: Any, out: Path, batch: int, seed: int = 42) -> Any:
    """An SFTTrainer set up as the stage sets it up on CPU."""
    from trl import SFTConfig, SFTTrainer

    return SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(out),
            use_cpu=True,
            report_to=[],
            max_length=None,
            per_device_train_batch_size=batch,
            remove_unused_columns=False,
            gradient_checkpointing=False,
            bf16=False,  # as the stage runs it on CPU (TRL's default is a bf16 autocast)
            seed=seed,
        ),
        train_dataset=records,
        processing_class=proc,
    )


def test_completion_loss_is_trls_sft_loss(tiny: tuple[Any, Any, pd.DataFrame], tmp_path: Path) -> None:
    """`creative_train.sft_loss: completion` swaps TRL's fused SFT loss for a cross-entropy whose LM head runs on
    the completion's positions only: on the same batch both are the same number with the same gradients, the
    prompt masked out of both, and TRL's entropy and token-accuracy logs are kept."""
    from datasets import Dataset
    from trl import SFTTrainer

    from components.training.creative.core import completion_loss

    model, proc, ex = tiny
    trainer = _sft_trainer(model, proc, Dataset.from_list(S.to_records(ex.head(6), 32)), tmp_path, 6)
    batch = next(iter(trainer.get_train_dataloader()))
    # what the model's loss relies on: the collator's labels are -100 everywhere but the completion
    rows = zip(batch["input_ids"], batch["labels"], strict=True)
    learnt = [proc.tokenizer.decode(ids[lab != -100]) for ids, lab in rows]
    assert sorted(t.split("<|im_end|>")[0] for t in learnt) == sorted(ex.head(6)["completion"])
    was_training = model.training
    model.train()  # as in training: both log under "train"
    grads = []
    for loss_fn in (SFTTrainer.compute_loss, completion_loss):
        model.zero_grad()
        loss = loss_fn(trainer, model, dict(batch))
        loss.backward()
        grads.append(
            (loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
        )
    (fused, g_fused), (own, g_own) = grads
    assert own == pytest.approx(fused, rel=1e-5)
    assert torch.allclose(g_own, g_fused, rtol=1e-4, atol=1e-7)
    # both logged one entropy and one token accuracy for the batch, the same numbers
    logged = trainer._metrics["train"]
    assert len(logged["entropy"]) == 2 and logged["entropy"][1] == pytest.approx(
        logged["entropy"][0], rel=1e-4
    )
    accuracy = logged["mean_token_accuracy"]
    assert len(accuracy) == 2 and accuracy[1] == pytest.approx(accuracy[0]) and 0 <= accuracy[0] <= 1
    assert logged["completion_tokens"] == [float((batch["labels"][:, 1:] != -100).sum())]  # only its own
    # a bf16 trainer on CPU runs the forward under autocast (as accelerate wraps it), the head outside it
    plain_forward = model.forward
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(plain_forward)
    try:
        with torch.no_grad():
            under = completion_loss(trainer, model, dict(batch)).item()
    finally:
        model.forward = plain_forward
    assert under == pytest.approx(fused, rel=0.05)
    model.zero_grad()
    model.train(was_training)  # the fixture's model is shared


def test_collation_cache_gives_trls_batches_collating_each_example_once(
    tiny: tuple[Any, Any, pd.DataFrame], small_world: Path, tmp_path: Path
) -> None:
    """`creative_train.sft_collate_cache`: the trainer iterates row numbers and gets, batch for batch, the
    tensors TRL's own collator makes from the same records (pairs with two images and described creatives
    with one, sequences of different lengths), while each example goes through TRL's collator once."""
    from datasets import Dataset

    from adflow.creative.data import describe_examples
    from components.training.creative.core import CollationCache

    model, proc, ex = tiny
    mixed = pd.concat([ex.head(10), describe_examples(small_world, set()).head(6)], ignore_index=True)
    records = Dataset.from_list(S.to_records(mixed.sample(frac=1, random_state=0), 32))

    plain, cached = (_sft_trainer(model, proc, records, tmp_path, 5, seed=3) for _ in range(2))
    cache = CollationCache.install(cached)  # as the stage installs it
    trl_collate, collated = cache.collate, list[int]()

    def counting(examples: list[dict[str, Any]]) -> Any:
        collated.append(len(examples))
        return trl_collate(examples)

    cache.collate = counting
    padded = 0
    for _ in range(2):  # two epochs: the second is served from the cache alone
        pairs = zip(plain.get_train_dataloader(), cached.get_train_dataloader(), strict=True)
        for want, got in pairs:
            assert set(got) == set(want)
            for key, value in want.items():
                assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
            padded += int((want["attention_mask"] == 0).sum())
    assert sum(collated) == len(records) and len(collated) == 4  # once per example, a batch at a time
    assert padded > 0  # sequences of different lengths shared batches
    assert sorted({len(p["image_grid_thw"]) for p in cache.pieces.values()}) == [1, 2]

    # a collator output the cache does not know how to batch stops it, naming the key
    odd = CollationCache(lambda e: {**plain.data_collator(e), "position_ids": torch.zeros(1)}, records, 0)
    with pytest.raises(ValueError, match="position_ids"):
        odd([{"row": 0}])
