"""Write a synthetic world in MovieLens-100k format (u.data, u.item), so the import branch has real volume."""

from pathlib import Path

import pandas as pd

from adflow.data.importers import ML_GENRES


def export(world: Path, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    imps = pd.read_parquet(world / "impressions.parquet")
    items = pd.read_parquet(world / "items.parquet")
    rating = imps["click"].map({1: 5, 0: 2})
    ts = imps["ts"].astype("int64") // 10**9
    ratings = pd.DataFrame(
        {"u": imps["user_id"], "i": imps["item_id"], "r": rating, "t": ts}
    ).drop_duplicates(["u", "i"])
    ratings.to_csv(out / "u.data", sep="\t", header=False, index=False)
    genres = {
        c: ML_GENRES[1 + k % (len(ML_GENRES) - 1)] for k, c in enumerate(sorted(items["category"].unique()))
    }
    lines = []
    for row in items.itertuples():
        flags = ["1" if g == genres[row.category] else "0" for g in ML_GENRES]
        lines.append(
            "|".join([str(row.item_id), row.title, "01-Jan-1995", "", "http://example.invalid", *flags])
        )
    (out / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    return out
