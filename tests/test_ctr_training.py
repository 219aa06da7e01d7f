"""CTR models and their Ray Train loop: shapes, cold start, learning, checkpoints and resume."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adflow.config import CTRModelConfig
from adflow.models.ctr import DENSE, OOV, CTRModel, CTRPredictor, FeatureEncoder, to_tensors
from components.features.build.core import build
from components.training.ctr.core import train

from .conftest import small_settings


@pytest.fixture(scope="module")
def feature_set(small_world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ctr")
    build(small_settings(tmp), small_world, tmp / "features")
    return tmp, tmp / "features"


@pytest.fixture(scope="module")
def moon_feature_set(feature_set: tuple[Path, Path]) -> Path:
    """The feature set with a MOON vector for every item (random: what the CTR stage does with whatever
    MOON wrote is under test, not MOON), as the MOON stage leaves it in Feast's item_content table."""
    import shutil

    tmp, features = feature_set
    out = tmp / "features_moon"
    shutil.copytree(features, out)
    table = out / "tables" / "item_content.parquet"
    items = pd.read_parquet(table)
    items["moon_embedding"] = list(np.random.default_rng(0).normal(size=(len(items), 8)).astype(np.float32))
    items.to_parquet(table, index=False)
    return out


def _encoder(features: Path) -> tuple[FeatureEncoder, dict[str, pd.DataFrame]]:
    frames = {s: pd.read_parquet(features / f"{s}.parquet") for s in ("train", "test")}
    catalog = pd.read_parquet(features / "tables" / "item_content.parquet").rename(
        columns={"text_embedding": "embedding"}
    )
    return FeatureEncoder.fit(frames["train"], catalog, 10), frames


def test_encoder_and_models(feature_set: tuple[Path, Path]) -> None:
    enc, frames = _encoder(feature_set[1])
    test = frames["test"]
    arrays = enc.transform(test)
    cold = enc.is_cold(test)
    assert cold.any() and (arrays["item"][cold] == OOV).all()  # unseen ids share the OOV bucket
    assert (arrays["item_raw"] > 0).all()  # ... but every item has its content embedding
    assert arrays["seq_item"].shape == (len(test), 10)
    assert (arrays["seq_mask"] == (arrays["seq_item"] != 0)).all()
    for variant in ("din", "ciubm"):
        m = CTRModel(CTRModelConfig(), variant, enc.sizes(), enc.content if variant == "ciubm" else None)
        out = m(to_tensors(arrays, slice(0, 64)))
        assert out.shape == (64,) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="content"):
        CTRModel(CTRModelConfig(), "ciubm", enc.sizes(), None)


def test_category_share_is_read_by_name(feature_set: tuple[Path, Path]) -> None:
    """The target's share of a user's clicks comes from counts named by category: a feature set whose catalog
    has other categories (a champion scoring a later run's features, or serving them) reads the same share."""
    enc, frames = _encoder(feature_set[1])
    share = DENSE.index("target_category_share")
    row = frames["test"].iloc[[0]].copy()
    target = enc.item_category[int(row["item_id"].iloc[0])]
    other = next(c for c in enc.affinity_order if c != target)
    row["category_affinity"] = [[3, 1]]
    row["affinity_categories"] = [[other, target]]
    assert enc.transform(row)["dense"][0, share] == pytest.approx(0.25)
    row["affinity_categories"] = [["a new category", other, target]]  # a later catalog's
    row["category_affinity"] = [[4, 3, 1]]
    assert enc.transform(row)["dense"][0, share] == pytest.approx(1 / 8)
    row["affinity_categories"] = [[other]]  # no click in the target's category
    row["category_affinity"] = [[2]]
    assert enc.transform(row)["dense"][0, share] == 0.0
    # every feature set this code writes names its counts
    assert all(
        len(a) == len(c)
        for a, c in zip(
            frames["train"]["category_affinity"], frames["train"]["affinity_categories"], strict=True
        )
    )


def test_content_path_tells_cold_items_apart(feature_set: tuple[Path, Path]) -> None:
    """Two cold items with the same category differ only through content: DIN scores them alike."""
    enc, frames = _encoder(feature_set[1])
    row = frames["test"].iloc[[0, 0]].copy()
    cold_ids = [i for i in enc.content_index if i not in enc.items]
    same_cat = [i for i in cold_ids if enc.item_category[i] == enc.item_category[cold_ids[0]]]
    pair = same_cat[:2] if len(same_cat) >= 2 else cold_ids[:2]
    row["item_id"] = pair
    arrays = to_tensors(enc.transform(row))
    torch.manual_seed(0)
    din, ciubm = (
        CTRModel(CTRModelConfig(dropout=0), v, enc.sizes(), enc.content).eval() for v in ("din", "ciubm")
    )
    with torch.no_grad():
        if enc.item_category[pair[0]] == enc.item_category[pair[1]]:
            d = din(arrays)
            assert torch.isclose(d[0], d[1])
        c = ciubm(arrays)
    assert not torch.isclose(c[0], c[1])


def test_attribute_yardstick_cosine_is_the_share_of_attributes_shared(
    feature_set: tuple[Path, Path], tmp_path: Path
) -> None:
    from components.training.ctr.core import attribute_catalog, content_catalog, content_tables

    items = [("lamp", {"colour": "red", "style": "sport"}), ("lamp", {"colour": "red", "style": "classic"})]
    items += [("bag", {"colour": "blue", "style": "sport"}), ("bag", {"colour": "red"})]
    pd.DataFrame(
        {
            "item_id": [1, 2, 3, 4],
            "category": [c for c, _ in items],
            "attributes": [json.dumps(a) for _, a in items],
        }
    ).to_parquet(tmp_path / "catalog.parquet")
    cat = content_catalog(tmp_path, "attributes")
    x = np.stack(cat["embedding"].to_numpy())
    assert np.allclose(np.linalg.norm(x, axis=1), 1)
    sims = x @ x.T  # three attributes: category, colour, style (a missing style is a value of its own)
    assert sims[0, 1] == pytest.approx(2 / 3) and sims[0, 2] == pytest.approx(1 / 3)
    assert sims[1, 2] == pytest.approx(0) and sims[2, 3] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="no catalog"):
        attribute_catalog(tmp_path / "nowhere")
    # a real feature set: the yardstick's table sits beside the embeddings, one row per encoder item
    enc, _ = _encoder(feature_set[1])
    tables = content_tables(feature_set[1], enc)
    assert "attributes" in tables and tables["attributes"].shape[0] == tables["text"].shape[0]
    assert np.allclose(np.linalg.norm(tables["attributes"][1:], axis=1), 1)
    m = CTRModel(CTRModelConfig(), "ciubm_attributes", enc.sizes(), tables["attributes"])
    test = pd.read_parquet(feature_set[1] / "test.parquet")
    out = m(to_tensors(enc.transform(test), slice(0, 32)))
    assert out.shape == (32,) and torch.isfinite(out).all()
    # every content table the core can build is a variant the config accepts, and nothing else
    from typing import get_args

    from adflow.config import CTRTrainConfig
    from components.training.ctr.core import EMBEDDINGS

    (names,) = get_args(CTRTrainConfig.model_fields["variants"].annotation)
    assert set(get_args(names)) == {"din", "ciubm"} | {f"ciubm_{e}" for e in EMBEDDINGS}


def test_whitening_gives_a_collapsed_embedding_s_small_directions_their_say(
    feature_set: tuple[Path, Path],
) -> None:
    """An embedding whose variance sits on a few directions that do not tell items' colour apart, with the
    colour in a direction of little variance (as a contrastive encoder can leave it): raw cosines barely
    separate same-colour pairs, whitened ones do. Whitening is a function of the catalog alone (a rotation of
    every vector, or their lengths, change nothing), rows without a vector stay zero."""
    from adflow.models.content import whiten
    from components.training.ctr.core import content_catalog

    rng = np.random.default_rng(0)
    n = 400
    colour = rng.integers(0, 2, n) * 2 - 1.0
    emb = np.hstack([rng.normal(0, 3.0, (n, 4)), 0.2 * colour[:, None], rng.normal(0, 0.05, (n, 11))])
    emb = np.vstack([emb, np.zeros((1, 16))])  # an item without a vector

    def separation(x: np.ndarray) -> float:  # same-colour minus other-colour mean cosine, in cosine sd
        u = x[:n] / np.linalg.norm(x[:n], axis=1, keepdims=True)
        sims, same = u @ u.T, colour[:, None] == colour[None, :]
        off = ~np.eye(n, dtype=bool)
        return float((sims[same & off].mean() - sims[~same].mean()) / sims[off].std())

    w = whiten(emb, 0.0)
    assert np.allclose(np.linalg.norm(w[:n], axis=1), 1, atol=1e-5) and not w[n].any()
    assert separation(emb) < 0.1 and separation(w) > 0.3
    rot, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    scaled = emb @ rot * rng.uniform(0.5, 2, (n + 1, 1))
    assert np.allclose(w @ w.T, whiten(scaled, 0.0) @ whiten(scaled, 0.0).T, atol=1e-4)
    # eps keeps some of the original weighting: between raw and fully whitened
    assert separation(emb) < separation(whiten(emb, 0.5)) < separation(w)
    with pytest.raises(ValueError, match="eps"):
        whiten(emb, -1.0)
    with pytest.raises(ValueError, match="two items"):
        whiten(np.zeros((3, 4)), 0.0)
    # the CTR stage reads the feature set's embeddings whitened on its catalog; the yardstick stays one-hot
    features = feature_set[1]
    raw, white = (np.stack(content_catalog(features, "text", e)["embedding"]) for e in (None, 1e-3))
    assert np.allclose(np.linalg.norm(white, axis=1), 1, atol=1e-5)
    assert np.linalg.norm(white.mean(0)) < 0.1 < np.linalg.norm(raw.mean(0))  # centred on the catalog
    top = np.linalg.svd(white - white.mean(0), compute_uv=False) ** 2
    assert top[0] / top.sum() < 2 / len(top)  # no direction rules the cosines any more
    # the gate's seed-free reading of an embedding reads the same vectors
    from adflow.models.reference import content_table

    _, rows = content_table(
        pd.read_parquet(features / "tables" / "item_content.parquet"), "text_embedding", 1e-3
    )
    assert np.allclose(rows, white, atol=1e-5)
    for e in (None, 1e-3):
        yard = np.stack(content_catalog(features, "attributes", e)["embedding"])
        assert np.allclose(yard, np.stack(content_catalog(features, "attributes")["embedding"]))


def test_auto_content_reads_moon_when_every_item_has_it(
    feature_set: tuple[Path, Path], moon_feature_set: Path, tmp_path: Path
) -> None:
    """features.content_embedding "auto": the candidate reads MOON's vectors when the feature set has one
    for every item, MiniLM's otherwise (MOON stepped aside: no item images); a pinned name is kept."""
    import shutil

    from components.training.ctr.core import candidate_content, content_catalog, resolve_content

    tmp, features = feature_set
    s = small_settings(tmp)
    assert s.features.content_embedding == "auto"
    assert candidate_content(features, "auto") == "text"  # built without MOON: its column is empty
    with pytest.raises(ValueError, match="no moon embedding"):
        content_catalog(features, candidate_content(features, "moon"))
    resolved = resolve_content(s, moon_feature_set)
    assert resolved.features.content_embedding == "moon" and s.features.content_embedding == "auto"
    assert candidate_content(moon_feature_set, "text") == "text"
    assert resolve_content(resolved, moon_feature_set) is resolved
    # one item without a MOON vector: not every item has one, so the text embedding
    partial = tmp_path / "features"
    shutil.copytree(moon_feature_set, partial)
    table = partial / "tables" / "item_content.parquet"
    items = pd.read_parquet(table)
    items.at[0, "moon_embedding"] = np.zeros(0, np.float32)
    items.to_parquet(table, index=False)
    assert candidate_content(partial, "auto") == "text"


@pytest.mark.slow
def test_train_checkpoint_and_resume(feature_set: tuple[Path, Path], moon_feature_set: Path) -> None:
    # on a feature set with MOON vectors: the candidate reads them (features.content_embedding auto), and
    # ciubm_moon, the same model on the same table, trains once, as ciubm
    tmp, features = feature_set[0], moon_feature_set
    s1 = small_settings(tmp, "ctr_train.epochs=1", "ctr_train.variants=[din, ciubm, ciubm_moon]")
    first = train(s1, features, tmp / "m1")
    assert first.epochs_run == [0] and first.checkpoint
    h = first.history[0]
    assert {"ciubm_val_auc", "din_val_auc", "ciubm_train_loss", "din_train_loss"} <= set(h)
    # resumed in a cluster's layout: the step folder is private to its pod, so what the Ray workers read and
    # write (tensors, Ray Train storage, history) goes to the workspace volume, and the results come back
    s2 = small_settings(
        tmp,
        "ctr_train.epochs=3",
        "ctr_train.variants=[din, ciubm, ciubm_moon]",
        "placement.workspace_pvc=adflow-workspace",
    )
    resumed = train(s2, features, tmp / "m2", resume_from=first.checkpoint)
    assert resumed.epochs_run == [1, 2]  # continues after the last completed epoch
    assert first.content == resumed.content == "moon"
    on_volume = Path(s2.placement.workspace) / "steps" / (tmp / "m2").resolve().relative_to("/")
    assert Path(resumed.checkpoint).is_relative_to(on_volume / "ray")
    assert (on_volume / "tensors" / "train.npz").exists() and not (tmp / "m2" / "tensors").exists()
    assert not (tmp / "m2" / "ray").exists()
    assert json.loads((tmp / "m2" / "models.json").read_text()) == {"ciubm": "ciubm.pt", "din": "din.pt"}
    a = torch.load(Path(first.model_dir) / "ciubm.pt", weights_only=False)
    b = torch.load(Path(resumed.model_dir) / "ciubm.pt", weights_only=False)
    assert isinstance(b, CTRPredictor)
    from components.training.ctr.core import content_catalog

    moon = np.stack(content_catalog(features, "moon", s2.ctr_model.content_whitening)["embedding"])
    assert b.encoder.content.shape[1] == moon.shape[1] == 8  # MOON's table (MiniLM's is 384 wide)
    diff = [
        not torch.equal(x, y)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    ]
    assert any(diff)  # training went on
    # the training loss went down across the resumed epochs
    losses = [
        json.loads(x)["ciubm_train_loss"]
        for x in (Path(resumed.model_dir) / "history.jsonl").read_text().splitlines()
    ]
    assert losses[-1] < h["ciubm_train_loss"]
    p = b.predict(pd.read_parquet(features / "test.parquet"))
    assert p.shape[0] > 0 and np.all((p > 0) & (p < 1))
    # resumed again with the same epochs: every epoch is done, so no Ray run (it would report no checkpoint);
    # the resumed checkpoint is exported as it is
    again = train(s2, features, tmp / "m3", resume_from=resumed.checkpoint)
    assert again.epochs_run == [] and again.history == [] and again.checkpoint == resumed.checkpoint
    c = torch.load(Path(again.model_dir) / "ciubm.pt", weights_only=False)
    assert all(
        torch.equal(x, y)
        for x, y in zip(b.model.state_dict().values(), c.model.state_dict().values(), strict=True)
    )


@pytest.fixture(scope="module", autouse=True)
def _shutdown_ray():  # type: ignore[no-untyped-def]
    """The training tests start Ray inside this process; stop it so later pipeline runs start clean."""
    yield
    import ray

    ray.shutdown()


@pytest.mark.slow
def test_deepspeed_zero_bf16_path_trains(feature_set: tuple[Path, Path]) -> None:
    """The `full` preset trains with DeepSpeed; the same loop runs here on CPU over gloo (ZeRO-1, bf16)."""
    tmp, features = feature_set
    s = small_settings(tmp, "ctr_train.epochs=2", "ctr_train.variants=[ciubm]")
    s.ctr_train.deepspeed = {
        "train_micro_batch_size_per_gpu": s.ctr_train.batch_size // s.placement.num_workers,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 1},
        "bf16": {"enabled": True},
    }
    result = train(s, features, tmp / "ds")
    assert result.epochs_run == [0, 1]
    assert all(np.isfinite(h["ciubm_train_loss"]) for h in result.history)
    p = torch.load(Path(result.model_dir) / "ciubm.pt", weights_only=False)
    assert next(p.model.parameters()).dtype == torch.float32  # exported for fp32 serving
    out = p.predict(pd.read_parquet(features / "test.parquet"))
    assert np.all((out > 0) & (out < 1))


def test_reference_model_features_and_fit(
    feature_set: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gate's reference: hand-checked crossed features, and a fit that reads the world's taste."""
    from adflow.models import reference
    from adflow.models.reference import ReferenceModel

    catalog = pd.DataFrame(
        {
            "item_id": [1, 2, 3, 4],
            "category": ["a", "a", "b", "b"],
            "attributes": [json.dumps({"colour": c, "style": s}) for c, s in ("rx", "bx", "ry", "by")],
        }
    )
    frame = pd.DataFrame(
        {
            "item_id": [4, 4],
            "hist_item_ids": [[1, 2, 3], None],
            "segment": ["s1", "s2"],
            "prominence": [0.5, 0.2],
            "clutter": [0.1, 0.9],
            "legibility": [0.3, 0.3],
            "theme": ["warm", "cool"],
            "position": [2, 1],
            "ctr_smoothed": [0.1, None],
            "click": [1, 0],
        }
    )
    m = ReferenceModel.fit(frame, catalog, seq_len=10)
    x = m.features(frame)
    # item 4 is (b, blue, y); of the history 1, 2, 3 one item shares each; two values per attribute
    assert x[0, :3] == pytest.approx([np.log(2 * 2 / 5)] * 3)
    assert (x[1, :3] == 0).all()  # no history: an even taste
    # segment s1 (first): indicator, three factors, two themes; s2 zero in row 0
    assert x[0, 3:9] == pytest.approx([1, 0.5, 0.1, 0.3, 0, 1]) and (x[0, 9:15] == 0).all()
    assert x[0, -2] == pytest.approx(np.log(2)) and x[1, -1] == pytest.approx(np.log(0.5))
    monkeypatch.setattr(reference, "CHUNK", 1)  # a split too big for one pass is built in chunks, the same
    assert np.array_equal(m.features(frame), x)
    monkeypatch.undo()
    # the category alone (the gate's content-headroom reference): one share column, then the same crosses
    alone = ReferenceModel.fit(frame, catalog, seq_len=10, attributes=["category"]).features(frame)
    assert alone.shape[1] == x.shape[1] - 2 and np.array_equal(alone[:, 0], x[:, 0])
    assert np.array_equal(alone[:, 1:], x[:, 3:])
    with pytest.raises(ValueError, match="not in the catalog"):
        ReferenceModel.fit(frame, catalog, seq_len=10, attributes=["category", "colur"])
    # a content embedding's similarity summaries: mean, max and top-5 mean of the centred cosines of the
    # target to its history; item 5's vector is missing (it reads 0), no history reads 0
    vectors = {1: [1.0, 0.0], 2: [0.0, 1.0], 3: [1.0, 1.0], 4: [-1.0, 0.2], 5: []}
    table = reference.content_table(
        pd.DataFrame({"item_id": list(vectors), "v": list(vectors.values())}), "v"
    )
    x_all = np.array([vectors[i] for i in (1, 2, 3, 4)])
    unit = {i: (np.array(vectors[i]) - x_all.mean(0)) for i in (1, 2, 3, 4)}
    unit = {i: v / np.linalg.norm(v) for i, v in unit.items()}
    frame2 = frame.assign(hist_item_ids=[[1, 2, 3, 5, 1, 2], None])
    with_sims = ReferenceModel.fit(frame2, catalog, seq_len=10, attributes=["category"], content=table)
    f = with_sims.features(frame2)
    cos = np.array([unit[i] @ unit[4] for i in (1, 2, 3)] + [0.0] + [unit[i] @ unit[4] for i in (1, 2)])
    assert f.shape[1] == alone.shape[1] + 3
    assert f[0, 1:4] == pytest.approx([cos.mean(), cos.max(), np.sort(cos)[-5:].mean()])
    assert (f[1, 1:4] == 0).all() and np.array_equal(f[:, 4:], alone[:, 1:])

    src = feature_set[1]
    train = pd.concat([pd.read_parquet(src / f"{s}.parquet") for s in ("train", "val")], ignore_index=True)
    test = pd.read_parquet(src / "test.parquet")
    ref = ReferenceModel.fit(train, pd.read_parquet(src / "catalog.parquet"), seq_len=10)
    from adflow.metrics import auc

    assert auc(test["click"].to_numpy(), ref.predict(test)) > 0.65
    monkeypatch.setattr(reference, "FIT_ROWS", len(train) // 2)  # a big split: fitted on a seeded sample
    half = ReferenceModel.fit(train, pd.read_parquet(src / "catalog.parquet"), seq_len=10)
    assert auc(test["click"].to_numpy(), half.predict(test)) > 0.6
    assert not np.allclose(half.lr.coef_, ref.lr.coef_)  # type: ignore[attr-defined]
    coef = ref.lr.coef_[0]  # type: ignore[attr-defined]
    assert coef[0] > 0.1  # users click in the categories their history shows
    assert coef[-2] < 0  # lower on the page, fewer clicks
