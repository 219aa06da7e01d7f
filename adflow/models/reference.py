"""A reference CTR model: logistic regression on a few hand-crossed features, scored beside CiUBM and DIN.

It answers a question the oracle AUC cannot: how much of the gap to the oracle could a model close with the
data the CTR models are given? The oracle knows each user's true taste; any model has to estimate it from
the user's last N clicks, and that estimate's noise is a floor no architecture removes. The features are the
click model's own terms, read from the same Feast features the neural models get:
  - per catalog attribute (category and each key of the items' `attributes` JSON): the share of the user's
    history that shares the target's value, as a smoothed log-ratio to a uniform taste;
  - the user's segment crossed with the creative's design factors (one weight per segment and factor);
  - log(position) and the item's smoothed CTR to date.
So it is a well-specified simple model, not a baseline to beat on every world: on imported data with other
attributes or no creatives it is still valid, just weaker. Fitted with the category alone (`attributes=
["category"]`: what the ID path knows too) beside it, the difference is the content headroom: what the rest
of the catalog's content, as the users' last clicks reveal their taste for it, is worth on this data. Given a
content embedding instead of the attributes (`content=`), it reads the embedding's similarities of the target
to the last clicks (mean, max, mean of the top 5 cosines; whitened as CiUBM reads them): what that
embedding's similarity structure buys a well-specified model, with no training-seed noise (the CTR models'
comparisons of embeddings need a study).
Features are standardised; the fit is sklearn's.
About forty weights need no more than `FIT_ROWS` rows: at full scale the fit reads a seeded sample and the
features are built `CHUNK` rows at a time (a 10M-row split x 50 clicks of history would not fit in memory).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

FACTORS = ("prominence", "clutter", "legibility")
FIT_ROWS = 200_000
CHUNK = 100_000
SIM_ROWS = 4096  # rows per gather of history vectors: 4096 x 20 clicks x 384 floats is ~125 MB
TOP = 5


def catalog_attributes(catalog: pd.DataFrame) -> pd.DataFrame:
    """item_id, category and one column per key of the `attributes` JSON (values as strings: a list value,
    such as MovieLens' genres, matches only the same list)."""
    parsed = [json.loads(a) if isinstance(a, str) and a else {} for a in catalog["attributes"]]
    attrs = pd.DataFrame(parsed, index=catalog.index).astype("string")
    return pd.concat([catalog[["item_id", "category"]], attrs], axis=1)


def attribute_codes(catalog: pd.DataFrame) -> dict[str, tuple[pd.Series, int]]:
    """Per attribute (category first): item_id -> value code (-1: none), and the number of values."""
    attrs = catalog_attributes(catalog).set_index("item_id")
    out = {}
    for a in attrs.columns:
        codes, uniques = pd.factorize(attrs[a], use_na_sentinel=True)
        out[str(a)] = (pd.Series(codes, index=attrs.index.to_numpy()), max(len(uniques), 1))
    return out


def content_table(
    content: pd.DataFrame, column: str, whitening: float | None = None
) -> tuple[pd.Series, np.ndarray]:
    """item_id -> row, and the rows: each item's vector less the catalog's mean, unit length (a cosine near 1
    for every pair, as a contrastive model's can be, would leave the summaries nothing to tell apart), or
    with `whitening` (ctr_model.content_whitening) whitened on the catalog as CiUBM reads it; an item without
    a vector gets zeros, so its similarities read 0. float32: a million items x 384 is 1.5 GB."""
    from adflow.models.content import whiten

    vecs = [np.asarray(v, np.float32) for v in content[column]]
    dim = max((len(v) for v in vecs), default=0)
    have = np.array([len(v) == dim and dim > 0 for v in vecs])
    x = np.zeros((len(vecs), max(dim, 1)), np.float32)
    if have.sum() >= 2 and whitening is not None:
        w = whiten(np.stack([v for v, h in zip(vecs, have, strict=True) if h]), whitening)
        x = np.zeros((len(vecs), w.shape[1]), np.float32)
        x[have] = w
    elif have.any():
        x[have] = np.stack([v for v, h in zip(vecs, have, strict=True) if h])
        x[have] -= x[have].mean(0)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # rows without a vector stay 0
    index = pd.Series(np.arange(len(vecs)), index=content["item_id"].astype(np.int64).to_numpy())
    return index[~index.index.duplicated(keep="last")], x


def similarity_summary(
    seq: np.ndarray, filled: np.ndarray, target: np.ndarray, table: tuple[pd.Series, np.ndarray]
) -> list[np.ndarray]:
    """Mean, max and mean of the top `TOP` cosines of the target's vector to its history's (0 with none)."""
    index, x = table
    n, L = seq.shape
    t_rows = index.reindex(target).fillna(-1).to_numpy(np.int64)
    h_rows = index.reindex(seq.ravel()).fillna(-1).to_numpy(np.int64).reshape(n, L)
    ok = filled & (h_rows >= 0) & (t_rows[:, None] >= 0)
    x0 = np.vstack([x, np.zeros((1, x.shape[1]), x.dtype)])  # row -1: zeros
    sims = np.zeros((n, L))
    for i in range(0, n, SIM_ROWS):
        sl = slice(i, i + SIM_ROWS)
        sims[sl] = np.einsum("nld,nd->nl", x0[h_rows[sl]], x0[t_rows[sl]])
    count = ok.sum(1)
    mean = np.where(count > 0, (sims * ok).sum(1) / np.maximum(count, 1), 0.0)
    masked = np.where(ok, sims, -np.inf)
    top = -np.sort(-masked, axis=1)[:, :TOP]
    top_ok = np.isfinite(top)
    top_mean = np.where(top_ok.any(1), np.where(top_ok, top, 0).sum(1) / np.maximum(top_ok.sum(1), 1), 0.0)
    return [mean, np.where(count > 0, masked.max(1), 0.0), top_mean]


@dataclass
class ReferenceModel:
    codes: dict[str, tuple[pd.Series, int]]  # from attribute_codes, built once at fit
    seq_len: int
    content: tuple[pd.Series, np.ndarray] | None = None  # content_table: similarity summaries as features
    segments: list[str] = field(default_factory=list)
    themes: list[str] = field(default_factory=list)
    fill_ctr: float = 0.05
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))
    lr: object = None

    def features(self, frame: pd.DataFrame) -> np.ndarray:
        """The crossed features of each row of a feature frame (hist_item_ids, item_id, segment, ...)."""
        if len(frame) > CHUNK:
            return np.vstack([self.features(frame.iloc[i : i + CHUNK]) for i in range(0, len(frame), CHUNK)])
        n, L = len(frame), self.seq_len
        seq = np.zeros((n, L), np.int64)  # item ids
        filled = np.zeros((n, L), bool)  # which slots hold one (an id may be 0 in imported data)
        for r, s in enumerate(frame["hist_item_ids"]):
            if s is not None and len(s):
                k = min(len(s), L)
                seq[r, :k] = np.asarray(s[:k], np.int64)
                filled[r, :k] = True
        length = filled.sum(1)
        target = frame["item_id"].astype(np.int64).to_numpy()
        cols: list[np.ndarray] = []
        for lookup, v in self.codes.values():
            t = lookup.reindex(target).fillna(-1).to_numpy(np.int64)
            h = lookup.reindex(seq.ravel()).fillna(-1).to_numpy(np.int64).reshape(n, L)
            match = ((h == t[:, None]) & (t[:, None] >= 0) & filled).sum(1)
            # log-ratio of the smoothed share to a uniform taste: 0 with no history, as with an even taste
            cols.append(np.log(v * (match + 1.0) / (length + v)))
        if self.content is not None:
            cols += similarity_summary(seq, filled, target, self.content)
        seg = frame["segment"].fillna("").to_numpy() if "segment" in frame else np.full(n, "")
        theme = frame["theme"].fillna("").to_numpy() if "theme" in frame else np.full(n, "")

        def num(c: str) -> np.ndarray:
            return frame[c].astype(float).fillna(0.0).to_numpy() if c in frame else np.zeros(n)

        for s in self.segments:
            m = (seg == s).astype(float)
            cols += [m, *(m * num(f) for f in FACTORS), *(m * (theme == t) for t in self.themes)]
        cols.append(np.log(np.clip(num("position"), 1, None)))
        ctr = frame["ctr_smoothed"].astype(float).fillna(self.fill_ctr) if "ctr_smoothed" in frame else None
        cols.append(np.log(np.clip(ctr.to_numpy(), 1e-4, 1)) if ctr is not None else np.zeros(n))
        return np.column_stack(cols).astype(np.float64)

    @classmethod
    def fit(
        cls,
        train: pd.DataFrame,
        catalog: pd.DataFrame,
        seq_len: int,
        seed: int = 0,
        attributes: list[str] | None = None,
        content: tuple[pd.Series, np.ndarray] | None = None,
    ) -> ReferenceModel:
        """`attributes`: the catalog attributes whose history shares it reads (None: all of them);
        `content`: a content_table whose similarity summaries it reads too."""
        from sklearn.linear_model import LogisticRegression

        codes = attribute_codes(catalog)
        if attributes is not None:
            if unknown := set(attributes) - set(codes):
                raise ValueError(f"attributes {sorted(unknown)} not in the catalog's {sorted(codes)}")
            codes = {a: c for a, c in codes.items() if a in attributes}

        if len(train) > FIT_ROWS:
            train = train.sample(FIT_ROWS, random_state=seed)

        m = cls(
            codes=codes,
            seq_len=seq_len,
            content=content,
            segments=sorted(train["segment"].dropna().unique()) if "segment" in train else [],
            themes=sorted(train["theme"].dropna().unique()) if "theme" in train else [],
            fill_ctr=float(train["click"].mean()),
        )
        x = m.features(train)
        m.mean, m.scale = x.mean(0), x.std(0) + 1e-9
        m.lr = LogisticRegression(C=1.0, max_iter=2000).fit((x - m.mean) / m.scale, train["click"].to_numpy())
        return m

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        x = (self.features(frame) - self.mean) / self.scale
        return np.asarray(self.lr.predict_proba(x)[:, 1])  # type: ignore[attr-defined]
