"""Importers: real data sets into the data contract, refusing malformed input with file, line and column.

    adflow data import taobao    --path UserBehavior.csv --out data/taobao [--catalog items.csv --images imgs/]
    adflow data import movielens --path ml-100k --out data/ml100k
    adflow data import catalog   --path items.csv --images imgs/ --out data/catalog

How each source maps onto the contract (what a source lacks stays null, as the contract allows):
- Taobao UserBehavior (user_id,item_id,category_id,behavior_type,timestamp; no header): every event goes to
  `behaviour` (pv->view, buy->purchase, cart, fav); every `pv` is an impression whose `click` label is 1
  when the same user later carts, favs or buys that item (the data set logs no un-clicked ads, so engagement
  after a view is the positive). Sessions split on 30-minute gaps; positions are unknown and recorded as 1.
- MovieLens-100k (u.data, u.item): ratings are `rate` events with the rating as value, and impressions
  with click = rating >= 4, the usual CTR reading of MovieLens. Category is the first listed genre. That label
  is positive for ~55% of ratings, far above an ad's click rate: validation bounds it by source
  (`validation.click_rate_by_source`, keyed by the manifest's source "movielens-100k").
- Catalog CSV + image folder (header: item_id,title,category[,price,attributes,image,box_x0..box_y1,launch_ts]):
  items, with images copied in and checked to open; one default creative per item using the item's image.
  UTF-8 (a byte-order mark, as Excel's "CSV UTF-8" writes, is fine); image suffixes match in any case.
Every imported item also gets one default creative (id = item id) so impressions always name a creative.
An import is built in a hidden sibling of `out` and renamed into place when it succeeds: a refused file
leaves nothing behind, so the corrected file imports into the same folder.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from adflow.contract import empty_frame, write_manifest, write_table

SESSION_GAP_S = 30 * 60
TAOBAO_COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
TAOBAO_BEHAVIOURS = {"pv": "view", "buy": "purchase", "cart": "cart", "fav": "fav"}
ML_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EARLIEST_TS = 946684800  # 2000-01-01: older epoch values are almost always a unit or column mix-up
# 2100-01-01: later epoch values are a unit mix-up (milliseconds are 1000x seconds), and beyond 2262 they
# would not even fit pandas' nanosecond timestamps
LATEST_TS = 4102444800
MS_HINT_FROM = 315532800  # 1980-01-01: a too-large value that is a time from then on in milliseconds is one


class ImportFormatError(ValueError):
    """A malformed input file. The message names the file, the line (1-based) and column, and what was expected."""

    def __init__(
        self, path: str | Path, line: int | None, column: str | None, expected: str, got: object = None
    ):
        self.path, self.line, self.column, self.expected, self.got = str(path), line, column, expected, got
        where = (
            f"{path}"
            + (f", line {line}" if line is not None else "")
            + (f", column '{column}'" if column else "")
        )
        tail = "" if got is None else f", got {got!r}"
        super().__init__(f"{where}: expected {expected}{tail}")


# ---------------------------------------------------------------- reading helpers


def _decoded_lines(path: Path, encoding: str, expected: str) -> Iterator[str]:
    """The file's lines, decoded one at a time, so that a byte the encoding cannot read is reported on its
    own line. (A text-mode file decodes 8 KB ahead of the csv reader: its error names a line thousands of
    lines early.) Lines split on b"\\n", which is never part of a multi-byte UTF-8 or Latin-1 character."""
    # one incremental decoder for the whole file: "utf-8-sig" drops a byte-order mark at the start only
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    line_no = 0
    with path.open("rb") as f:
        for raw in f:
            line_no += 1
            try:
                yield decoder.decode(raw)
            except UnicodeDecodeError as e:
                # e.object may be the line less a byte-order mark the decoder has already taken off
                at = min(max(e.start + len(raw) - len(e.object), 0), len(raw) - 1)
                preview = raw.decode(encoding.removesuffix("-sig"), errors="replace").rstrip("\r\n")[:80]
                raise ImportFormatError(
                    path,
                    line_no,
                    None,
                    expected,
                    f"byte 0x{raw[at]:02x} at byte {at + 1} of the line: {preview}",
                ) from e
        try:
            tail = decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise ImportFormatError(path, max(line_no, 1), None, expected, "a truncated character") from e
        if tail:
            yield tail


def _text_kind(encoding: str) -> str:
    return "UTF-8 text" if encoding.replace("_", "-").lower().startswith("utf-8") else f"{encoding} text"


def _read_delimited(
    path: Path,
    sep: str,
    n_fields: int,
    names: tuple[str, ...],
    header: bool,
    encoding: str = "utf-8-sig",
    expected_text: str | None = None,
) -> pd.DataFrame:
    """Read a delimited file as strings, checking the field count of every line (reported with its line number).
    `expected_text` is what a file the encoding cannot read is told it should be (default: "<encoding> text")."""
    if not path.exists():
        raise ImportFormatError(path, None, None, "an existing file")
    rows: list[list[str]] = []
    line_nos: list[int] = []
    reader = csv.reader(_decoded_lines(path, encoding, expected_text or _text_kind(encoding)), delimiter=sep)
    try:
        for row in reader:
            line = reader.line_num
            if header and line == 1:
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines carry nothing
            if len(row) != n_fields:
                raise ImportFormatError(
                    path, line, None, f"{n_fields} fields separated by {sep!r}", f"{len(row)} fields"
                )
            rows.append(row)
            line_nos.append(line)
    except csv.Error as e:
        raise ImportFormatError(path, reader.line_num, None, "well-formed CSV", str(e)) from e
    df = pd.DataFrame(rows, columns=list(names), dtype=object)
    df["_line"] = np.asarray(line_nos, dtype=np.int64)
    return df


def _ints(
    df: pd.DataFrame,
    col: str,
    path: Path,
    what: str = "an integer",
    lo: int | None = None,
    hi: int | None = None,
) -> pd.Series:
    s = pd.to_numeric(df[col].str.strip(), errors="coerce")
    bad = s.isna() | (s != s.round()) | (s.abs() >= 2.0**63)  # past int64 the cast below would wrap around
    if lo is not None:
        bad |= s < lo
    if hi is not None:
        bad |= s > hi
    if bad.any():
        k = int(np.argmax(bad.to_numpy()))
        raise ImportFormatError(path, int(df["_line"].iloc[k]), col, what, df[col].iloc[k])
    return s.astype(np.int64)


def _timestamps(df: pd.DataFrame, col: str, path: Path, lo: int) -> pd.Series:
    """Unix timestamps in seconds, from `lo` to LATEST_TS. A value past the end is refused with its line and,
    when it reads as a plausible time in milliseconds, says so: unchecked it would crash the conversion."""
    what = f"a Unix timestamp in seconds ({lo} to {LATEST_TS})"
    s = _ints(df, col, path, what, lo=lo)
    late = s > LATEST_TS
    if late.any():
        k = int(np.argmax(late.to_numpy()))
        value = int(s.iloc[k])
        if max(lo, MS_HINT_FROM) <= value // 1000 <= LATEST_TS:
            what += "; this looks like milliseconds: divide the column by 1000"
        raise ImportFormatError(path, int(df["_line"].iloc[k]), col, what, df[col].iloc[k])
    return s


def _sessions(users: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Session ids: a new session per user after a 30-minute gap (input sorted by user, then time)."""
    new = np.ones(len(users), dtype=bool)
    new[1:] = (users[1:] != users[:-1]) | (ts[1:] - ts[:-1] > SESSION_GAP_S)
    return np.cumsum(new)


def _default_creatives(items: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "creative_id": items["item_id"].to_numpy(),
            "item_id": items["item_id"].to_numpy(),
            "image_path": items["image_path"].to_numpy(),
        }
    )


def _interaction_tables(
    items: pd.DataFrame, impressions: pd.DataFrame, behaviour: pd.DataFrame
) -> dict[str, pd.DataFrame]:
    """The contract tables of an interaction source: users are whoever acted; one default creative per item."""
    users = pd.DataFrame({"user_id": np.sort(behaviour["user_id"].unique()), "segment": None})
    return {
        "items": items,
        "creatives": _default_creatives(items),
        "users": users,
        "impressions": impressions,
        "behaviour": behaviour,
    }


def _epoch(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s.astype(np.int64), unit="s", utc=True)


def _write(
    out: Path, source: str, tables: dict[str, pd.DataFrame], extra: dict[str, object]
) -> dict[str, object]:
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        write_table(out, name, df)
    return write_manifest(out, source, extra)


def _fresh_out(out: str | Path) -> Path:
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} is not empty: import into a new folder")
    return path


@contextlib.contextmanager
def _staged(out: str | Path) -> Iterator[Path]:
    """A fresh folder to build the import in: a hidden sibling of `out`, renamed to `out` when the block
    succeeds and removed when it raises. A refused file (a missing image on line 9,000) then leaves nothing
    behind, and the retry with the corrected file goes into the same `out`."""
    final = _fresh_out(out)
    final.parent.mkdir(parents=True, exist_ok=True)
    # not tempfile.mkdtemp: its folder is private (0700) and would stay so once renamed to `out`
    work = final.parent / f".{final.name}.importing-{uuid.uuid4().hex[:12]}"
    work.mkdir()
    try:
        yield work
        try:
            os.replace(work, final)  # atomic; replaces `out` when it is an empty folder
        except OSError:
            # `out` is a mount point or on another file system (a pipeline's output volume): move the
            # contents in instead
            final.mkdir(parents=True, exist_ok=True)
            for child in work.iterdir():
                shutil.move(str(child), str(final / child.name))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- Taobao UserBehavior


def import_taobao(
    csv_path: str | Path, out: str | Path, catalog: str | Path | None = None, images: str | Path | None = None
) -> dict[str, object]:
    with _staged(out) as out_dir:
        return _taobao(
            Path(csv_path), out_dir, Path(catalog) if catalog else None, Path(images) if images else None
        )


def _taobao(path: Path, out_dir: Path, catalog: Path | None, images: Path | None) -> dict[str, object]:
    raw = _read_delimited(path, ",", 5, TAOBAO_COLUMNS, header=False)
    if raw.empty:
        raise ImportFormatError(path, None, None, "at least one event line")
    df = pd.DataFrame({"_line": raw["_line"]})
    for col in ("user_id", "item_id", "category_id"):
        df[col] = _ints(raw, col, path, "a non-negative integer id", lo=0)
    df["timestamp"] = _timestamps(raw, "timestamp", path, lo=EARLIEST_TS)
    beh = raw["behavior_type"].str.strip()
    bad = ~beh.isin(list(TAOBAO_BEHAVIOURS))
    if bad.any():
        k = int(np.argmax(bad.to_numpy()))
        raise ImportFormatError(
            path,
            int(raw["_line"].iloc[k]),
            "behavior_type",
            f"one of {sorted(TAOBAO_BEHAVIOURS)}",
            beh.iloc[k],
        )
    df["event_type"] = beh.map(TAOBAO_BEHAVIOURS)
    df = df.sort_values(["user_id", "timestamp", "_line"], kind="stable").reset_index(drop=True)

    # click label for a view: the user engages with the item at or after it
    engaged = (
        df[df["event_type"] != "view"]
        .groupby(["user_id", "item_id"])["timestamp"]
        .max()
        .rename("last_engaged")
    )
    views = df[df["event_type"] == "view"].join(engaged, on=["user_id", "item_id"])
    views["click"] = (views["last_engaged"].notna() & (views["last_engaged"] >= views["timestamp"])).astype(
        np.int64
    )
    views["session_id"] = _sessions(views["user_id"].to_numpy(), views["timestamp"].to_numpy())
    views = views.sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True)
    impressions = pd.DataFrame(
        {
            "impression_id": np.arange(1, len(views) + 1),
            "ts": _epoch(views["timestamp"]),
            "user_id": views["user_id"].to_numpy(),
            "item_id": views["item_id"].to_numpy(),
            "creative_id": views["item_id"].to_numpy(),
            "query_id": pd.array([None] * len(views), dtype="Int64"),
            "session_id": views["session_id"].to_numpy(),
            "position": 1,
            "click": views["click"].to_numpy(),
        }
    )
    ev = df.sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True)
    behaviour = pd.DataFrame(
        {
            "event_id": np.arange(1, len(ev) + 1),
            "ts": _epoch(ev["timestamp"]),
            "user_id": ev["user_id"].to_numpy(),
            "item_id": ev["item_id"].to_numpy(),
            "event_type": ev["event_type"].to_numpy(),
            "value": np.nan,
        }
    )
    first = df.groupby("item_id").agg(
        category_id=("category_id", lambda s: s.mode().iloc[0]), first_ts=("timestamp", "min")
    )
    items = pd.DataFrame(
        {
            "item_id": first.index.to_numpy(),
            "title": "",
            "category": first["category_id"].astype(str).to_numpy(),
            "attributes": "{}",
            "price": np.nan,
            "image_path": None,
            "launch_ts": _epoch(first["first_ts"]),
        }
    )
    if catalog is not None:
        cat_items, n_copied = _read_catalog(catalog, images, out_dir)
        missing = set(items["item_id"]) - set(cat_items["item_id"])
        known = cat_items.set_index("item_id")
        items = items.set_index("item_id")
        for col in (
            "title",
            "category",
            "attributes",
            "price",
            "image_path",
            "box_x0",
            "box_y0",
            "box_x1",
            "box_y1",
        ):
            items[col] = known[col].reindex(items.index).where(lambda s: s.notna(), items.get(col))
        items = items.reset_index()
        extra_note = {"catalog_items_missing": len(missing), "images_copied": n_copied}
    else:
        extra_note = {}
    tables = _interaction_tables(items, impressions, behaviour)
    return _write(out_dir, "taobao", tables, {"input": str(path), **extra_note})


# ---------------------------------------------------------------- MovieLens-100k


def import_movielens(directory: str | Path, out: str | Path) -> dict[str, object]:
    with _staged(out) as out_dir:
        return _movielens(Path(directory), out_dir)


def _movielens(d: Path, out_dir: Path) -> dict[str, object]:
    data_path, item_path = d / "u.data", d / "u.item"
    raw = _read_delimited(data_path, "\t", 4, ("user_id", "item_id", "rating", "timestamp"), header=False)
    if raw.empty:
        raise ImportFormatError(data_path, None, None, "at least one rating line")
    ratings = pd.DataFrame({"_line": raw["_line"]})
    ratings["user_id"] = _ints(raw, "user_id", data_path, "a positive integer user id", lo=1)
    ratings["item_id"] = _ints(raw, "item_id", data_path, "a positive integer item id", lo=1)
    ratings["rating"] = _ints(raw, "rating", data_path, "a rating from 1 to 5", lo=1, hi=5)
    ratings["timestamp"] = _timestamps(raw, "timestamp", data_path, lo=0)

    names = ("item_id", "title", "release_date", "video_release_date", "url", *ML_GENRES)
    raw_items = _read_delimited(item_path, "|", len(names), names, header=False, encoding="latin-1")
    item_ids = _ints(raw_items, "item_id", item_path, "a positive integer item id", lo=1)
    dup = item_ids.duplicated()
    if dup.any():
        k = int(np.argmax(dup.to_numpy()))
        raise ImportFormatError(
            item_path, int(raw_items["_line"].iloc[k]), "item_id", "a unique item id", int(item_ids.iloc[k])
        )
    flags = {g: _ints(raw_items, g, item_path, "a genre flag 0 or 1", lo=0, hi=1) for g in ML_GENRES}
    unknown = ~ratings["item_id"].isin(set(item_ids))
    if unknown.any():
        k = int(np.argmax(unknown.to_numpy()))
        raise ImportFormatError(
            data_path,
            int(ratings["_line"].iloc[k]),
            "item_id",
            f"an item id listed in {item_path.name}",
            int(ratings["item_id"].iloc[k]),
        )
    release = pd.to_datetime(
        raw_items["release_date"].str.strip(), format="%d-%b-%Y", errors="coerce", utc=True
    )
    first_rating = ratings.groupby("item_id")["timestamp"].min()
    fallback = _epoch(
        first_rating.reindex(item_ids.to_numpy()).fillna(ratings["timestamp"].min()).astype(np.int64)
    )
    launch = release.where(release.notna(), pd.Series(fallback.to_numpy(), index=release.index))
    genres = [[g for g in ML_GENRES if flags[g].iloc[k] == 1] or ["unknown"] for k in range(len(raw_items))]
    items = pd.DataFrame(
        {
            "item_id": item_ids.to_numpy(),
            "title": raw_items["title"].str.strip().to_numpy(),
            "category": [g[0] for g in genres],
            "attributes": [
                json.dumps({"genres": g, "release_date": r.strip()})
                for g, r in zip(genres, raw_items["release_date"], strict=True)
            ],
            "price": np.nan,
            "image_path": None,
            "launch_ts": launch.to_numpy(),
        }
    )
    r = ratings.sort_values(["user_id", "timestamp", "_line"], kind="stable").reset_index(drop=True)
    r["session_id"] = _sessions(r["user_id"].to_numpy(), r["timestamp"].to_numpy())
    r = r.sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True)
    ids = np.arange(1, len(r) + 1)
    impressions = pd.DataFrame(
        {
            "impression_id": ids,
            "ts": _epoch(r["timestamp"]),
            "user_id": r["user_id"].to_numpy(),
            "item_id": r["item_id"].to_numpy(),
            "creative_id": r["item_id"].to_numpy(),
            "query_id": pd.array([None] * len(r), dtype="Int64"),
            "session_id": r["session_id"].to_numpy(),
            "position": 1,
            "click": (r["rating"] >= 4).astype(np.int64).to_numpy(),
        }
    )
    behaviour = pd.DataFrame(
        {
            "event_id": ids,
            "ts": _epoch(r["timestamp"]),
            "user_id": r["user_id"].to_numpy(),
            "item_id": r["item_id"].to_numpy(),
            "event_type": "rate",
            "value": r["rating"].astype(float).to_numpy(),
        }
    )
    tables = _interaction_tables(items, impressions, behaviour)
    return _write(out_dir, "movielens-100k", tables, {"input": str(d)})


# ---------------------------------------------------------------- catalog CSV + images

CATALOG_REQUIRED = ("item_id", "title", "category")
CATALOG_OPTIONAL = ("price", "attributes", "image", "box_x0", "box_y0", "box_x1", "box_y1", "launch_ts")
# "utf-8-sig": a catalog saved by Excel as "CSV UTF-8" starts with a byte-order mark, which plain "utf-8"
# reads as part of the first column's name
CATALOG_ENCODING = "utf-8-sig"
CATALOG_TEXT = "UTF-8 text (save the catalog as CSV UTF-8; Latin-1 / Windows-1252 files are not read)"


def _read_catalog(path: Path, images: Path | None, out_dir: Path) -> tuple[pd.DataFrame, int]:
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise ImportFormatError(path, None, None, "an existing file")
    try:
        header = next(csv.reader(_decoded_lines(path, CATALOG_ENCODING, CATALOG_TEXT)), None)
    except csv.Error as e:
        raise ImportFormatError(path, 1, None, "a well-formed CSV header row", str(e)) from e
    if not header:
        raise ImportFormatError(path, 1, None, f"a header row with {', '.join(CATALOG_REQUIRED)}")
    header = [h.strip() for h in header]
    for col in CATALOG_REQUIRED:
        if col not in header:
            raise ImportFormatError(
                path, 1, col, f"a header naming the required column '{col}'", ",".join(header)
            )
    for col in header:
        if col not in CATALOG_REQUIRED + CATALOG_OPTIONAL:
            raise ImportFormatError(
                path, 1, col, f"only known columns ({', '.join(CATALOG_REQUIRED + CATALOG_OPTIONAL)})", col
            )
    raw = _read_delimited(
        path,
        ",",
        len(header),
        tuple(header),
        header=True,
        encoding=CATALOG_ENCODING,
        expected_text=CATALOG_TEXT,
    )
    if raw.empty:
        raise ImportFormatError(path, None, None, "at least one item row")
    items = pd.DataFrame({"item_id": _ints(raw, "item_id", path, "a non-negative integer item id", lo=0)})
    dup = items["item_id"].duplicated()
    if dup.any():
        k = int(np.argmax(dup.to_numpy()))
        raise ImportFormatError(
            path, int(raw["_line"].iloc[k]), "item_id", "a unique item id", int(items["item_id"].iloc[k])
        )
    for col in ("title", "category"):
        empty = raw[col].str.strip() == ""
        if empty.any():
            k = int(np.argmax(empty.to_numpy()))
            raise ImportFormatError(path, int(raw["_line"].iloc[k]), col, "a non-empty value", "")
        items[col] = raw[col].str.strip()

    def floats(col: str, check: Callable[[pd.Series], pd.Series], what: str) -> pd.Series:
        if col not in raw:
            return pd.Series(np.nan, index=raw.index)
        text = raw[col].str.strip()
        s = pd.to_numeric(text.replace("", np.nan), errors="coerce")
        bad = (text != "") & (s.isna() | ~check(s))
        if bad.any():
            k = int(np.argmax(bad.to_numpy()))
            raise ImportFormatError(path, int(raw["_line"].iloc[k]), col, what, raw[col].iloc[k])
        return s

    # finite: "inf" and "1e400" parse as a float, and an infinite price would poison every mean downstream
    items["price"] = floats("price", lambda s: (s > 0) & np.isfinite(s), "a positive finite price or empty")
    for col in ("box_x0", "box_y0", "box_x1", "box_y1"):
        items[col] = floats(col, lambda s: (s >= 0) & (s <= 1), "a box coordinate in [0, 1] or empty")
    attrs = []
    for k, text in enumerate(raw["attributes"] if "attributes" in raw else [""] * len(raw)):
        text = text.strip()
        if not text:
            attrs.append("{}")
        elif text.startswith("{"):
            try:
                json.loads(text)
            except json.JSONDecodeError as e:
                raise ImportFormatError(
                    path, int(raw["_line"].iloc[k]), "attributes", "a JSON object or k=v;k=v pairs", text
                ) from e
            attrs.append(text)
        else:
            pairs = [p.split("=", 1) for p in text.split(";") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ImportFormatError(
                    path, int(raw["_line"].iloc[k]), "attributes", "a JSON object or k=v;k=v pairs", text
                )
            attrs.append(json.dumps({a.strip(): b.strip() for a, b in pairs}, sort_keys=True))
    items["attributes"] = attrs
    if "launch_ts" in raw:
        ts = pd.to_datetime(raw["launch_ts"].str.strip(), utc=True, errors="coerce", format="ISO8601")
        bad = ts.isna()
        if bad.any():
            k = int(np.argmax(bad.to_numpy()))
            raise ImportFormatError(
                path,
                int(raw["_line"].iloc[k]),
                "launch_ts",
                "an ISO-8601 date or time",
                raw["launch_ts"].iloc[k],
            )
        items["launch_ts"] = ts
    else:
        items["launch_ts"] = pd.Timestamp("2000-01-01", tz="UTC")

    paths: list[str | None] = []
    copied = 0
    by_stem: dict[str, list[Path]] = {}  # item id -> its image files, any suffix case (1.JPG from a camera)
    if images is not None:
        if not images.is_dir():
            raise ImportFormatError(images, None, None, "a folder of item images")
        (out_dir / "images" / "items").mkdir(parents=True, exist_ok=True)
        for f in images.iterdir():
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                by_stem.setdefault(f.stem, []).append(f)
    for k, item_id in enumerate(items["item_id"]):
        line = int(raw["_line"].iloc[k])
        named = raw["image"].iloc[k].strip() if "image" in raw else ""
        if images is None:
            if named:
                raise ImportFormatError(path, line, "image", "an --images folder to find the file in", named)
            paths.append(None)
            continue
        if named:
            src = images / named
            if not src.is_file():
                raise ImportFormatError(path, line, "image", f"a file inside {images}", named)
        else:
            # by suffix in IMAGE_SUFFIXES' order, then by name: the same file whichever order iterdir gave
            found = sorted(
                by_stem.get(str(item_id), []), key=lambda f: (IMAGE_SUFFIXES.index(f.suffix.lower()), f.name)
            )
            if not found:
                raise ImportFormatError(
                    path,
                    line,
                    "image",
                    f"an image named {item_id}.png/.jpg/.jpeg/.webp (any case) in {images} (or an 'image' column)",
                    None,
                )
            src = found[0]
        try:
            with Image.open(src) as im:
                im.verify()
        except (UnidentifiedImageError, OSError) as e:
            raise ImportFormatError(
                path, line, "image", "a readable PNG/JPEG/WebP image", f"{src.name}: {e}"
            ) from e
        rel = f"images/items/{item_id}{src.suffix.lower()}"
        shutil.copyfile(src, out_dir / rel)
        copied += 1
        paths.append(rel)
    items["image_path"] = paths
    return items, copied


def import_catalog(
    catalog: str | Path, out: str | Path, images: str | Path | None = None
) -> dict[str, object]:
    """A catalog alone: items and their default creatives; users, impressions and behaviour stay empty."""
    with _staged(out) as out_dir:
        items, copied = _read_catalog(Path(catalog), Path(images) if images else None, out_dir)
        tables = {
            "items": items,
            "creatives": _default_creatives(items),
            "users": empty_frame("users"),
            "impressions": empty_frame("impressions"),
            "behaviour": empty_frame("behaviour"),
        }
        return _write(
            out_dir, "catalog", tables, {"input": str(catalog), "images_copied": copied, "catalog_only": True}
        )


IMPORTERS = {"taobao": import_taobao, "movielens": import_movielens, "catalog": import_catalog}
