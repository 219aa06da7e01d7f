"""Importers: small files in each supported format, good and malformed."""

import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from adflow.contract import TABLES
from adflow.data.importers import ImportFormatError, import_catalog, import_movielens, import_taobao

TAOBAO = """1,100,7,pv,1511544070
1,101,7,pv,1511544100
1,100,7,cart,1511544200
2,101,7,pv,1511550000
2,102,8,pv,1511560000
2,102,8,buy,1511560100
2,100,7,fav,1511700000
"""


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def _contract_ok(out: Path) -> dict[str, pd.DataFrame]:
    frames = {}
    for name in ("items", "creatives", "users", "impressions", "behaviour"):
        df = pd.read_parquet(out / f"{name}.parquet")
        assert list(df.columns) == TABLES[name].column_names
        frames[name] = df
    return frames


def test_taobao_maps_events_and_labels(tmp_path: Path) -> None:
    src = _write(tmp_path / "UserBehavior.csv", TAOBAO)
    m = import_taobao(src, tmp_path / "out")
    f = _contract_ok(tmp_path / "out")
    assert m["rows"]["behaviour"] == 7
    assert sorted(f["behaviour"]["event_type"].unique()) == ["cart", "fav", "purchase", "view"]
    imp = f["impressions"].set_index(["user_id", "item_id"])["click"]
    assert imp[(1, 100)] == 1  # viewed, then carted
    assert imp[(1, 101)] == 0  # viewed only
    assert imp[(2, 102)] == 1  # viewed, then bought
    assert set(f["items"]["item_id"]) == {100, 101, 102}
    assert f["items"].set_index("item_id").at[102, "category"] == "8"
    assert f["impressions"]["creative_id"].isin(f["creatives"]["creative_id"]).all()


@pytest.mark.parametrize(
    ("text", "line", "column", "expected"),
    [
        ("1,100,7,pv,1511544070\n1,100,7,pv\n", 2, None, "5 fields"),
        ("1,100,7,pv,1511544070\n1,abc,7,pv,1511544070\n", 2, "item_id", "non-negative integer id"),
        (
            "1,100,7,pv,1511544070\n1,100,7,pv,1511544070\n1,100,7,click,1511544070\n",
            3,
            "behavior_type",
            "one of",
        ),
        ("1,100,7,pv,15115\n", 1, "timestamp", "Unix timestamp"),
        # milliseconds: refused with the line and a hint (it crashed the conversion to datetimes)
        ("1,100,7,pv,1511544070\n1,100,7,pv,1511544070000\n", 2, "timestamp", "looks like milliseconds"),
        ("1,100,7,pv,99999999999999999999999\n", 1, "timestamp", "Unix timestamp"),  # past int64
        ("-3,100,7,pv,1511544070\n", 1, "user_id", "non-negative"),
    ],
)
def test_taobao_malformed(tmp_path: Path, text: str, line: int, column: str | None, expected: str) -> None:
    src = _write(tmp_path / "bad.csv", text)
    with pytest.raises(ImportFormatError) as e:
        import_taobao(src, tmp_path / "out")
    assert e.value.line == line and e.value.column == column
    msg = str(e.value)
    assert str(src) in msg and f"line {line}" in msg and expected in msg
    assert not (tmp_path / "out" / "impressions.parquet").exists()  # nothing half-written


U_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
    "3|Four Rooms (1995)||||0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
)
U_DATA = "196\t1\t3\t881250949\n186\t2\t5\t891717742\n196\t3\t4\t878887116\n22\t1\t1\t880606923\n"


def _ml(tmp_path: Path, data: str = U_DATA, items: str = U_ITEM) -> Path:
    d = tmp_path / "ml-100k"
    d.mkdir()
    _write(d / "u.data", data)
    _write(d / "u.item", items, encoding="latin-1")
    return d


def test_movielens_maps_ratings(tmp_path: Path) -> None:
    import_movielens(_ml(tmp_path), tmp_path / "out")
    f = _contract_ok(tmp_path / "out")
    items = f["items"].set_index("item_id")
    assert items.at[1, "title"] == "Toy Story (1995)"
    assert items.at[1, "category"] == "Animation"  # first flagged genre
    assert items.at[2, "category"] == "Action"
    imp = f["impressions"].set_index(["user_id", "item_id"])["click"]
    assert imp[(186, 2)] == 1 and imp[(196, 1)] == 0 and imp[(196, 3)] == 1
    assert (f["behaviour"]["event_type"] == "rate").all()
    assert sorted(f["behaviour"]["value"]) == [1.0, 3.0, 4.0, 5.0]
    assert items["launch_ts"].notna().all()  # missing release date falls back to the first rating


def test_movielens_latin1_titles(tmp_path: Path) -> None:
    items = U_ITEM + "4|Café Society (1995)|01-Jan-1995||http://x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0\n"
    import_movielens(_ml(tmp_path, items=items), tmp_path / "out")
    assert "Café Society (1995)" in set(pd.read_parquet(tmp_path / "out" / "items.parquet")["title"])


@pytest.mark.parametrize(
    ("data", "items", "file", "line", "column", "expected"),
    [
        ("196\t1\t6\t881250949\n", U_ITEM, "u.data", 1, "rating", "rating from 1 to 5"),
        ("196\t1\t3\t881250949\n196\t9\t3\t881250949\n", U_ITEM, "u.data", 2, "item_id", "listed in u.item"),
        ("196\t1\t3\n", U_ITEM, "u.data", 1, None, "4 fields"),
        ("196\t1\t3\t881250949000\n", U_ITEM, "u.data", 1, "timestamp", "looks like milliseconds"),
        (
            U_DATA,
            U_ITEM.replace("|0|0|0|1|1|1|", "|0|0|0|1|2|1|", 1),
            "u.item",
            1,
            "Children's",
            "genre flag",
        ),
        (
            U_DATA,
            U_ITEM + "2|Dup (1995)|||x|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n",
            "u.item",
            4,
            "item_id",
            "unique",
        ),
    ],
)
def test_movielens_malformed(
    tmp_path: Path, data: str, items: str, file: str, line: int, column: str | None, expected: str
) -> None:
    with pytest.raises(ImportFormatError) as e:
        import_movielens(_ml(tmp_path, data, items), tmp_path / "out")
    assert Path(e.value.path).name == file and e.value.line == line and e.value.column == column
    assert expected in str(e.value)


def _images(tmp_path: Path, ids: list[int]) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in ids:
        Image.new("RGB", (16, 16), (i * 40 % 255, 90, 90)).save(d / f"{i}.png")
    return d


CATALOG = (
    "item_id,title,category,price,attributes,box_x0,box_y0,box_x1,box_y1\n"
    '1,Red leather bag,bag,59.9,"{""colour"": ""red""}",0.1,0.1,0.9,0.9\n'
    "2,Blue mug,mug,9.5,colour=blue;material=ceramic,,,,\n"
)


def test_catalog_with_images(tmp_path: Path) -> None:
    src = _write(tmp_path / "catalog.csv", CATALOG)
    m = import_catalog(src, tmp_path / "out", images=_images(tmp_path, [1, 2]))
    assert m["catalog_only"] is True and m["images_copied"] == 2
    items = pd.read_parquet(tmp_path / "out" / "items.parquet").set_index("item_id")
    assert (tmp_path / "out" / items.at[1, "image_path"]).is_file()
    assert items.at[2, "attributes"] == '{"colour": "blue", "material": "ceramic"}'
    assert items.at[1, "box_x1"] == pytest.approx(0.9) and pd.isna(items.at[2, "box_x0"])


def test_taobao_with_catalog_fills_titles_and_images(tmp_path: Path) -> None:
    cat = _write(
        tmp_path / "catalog.csv", "item_id,title,category\n100,Watch,watch\n101,Mug,mug\n102,Bag,bag\n"
    )
    import_taobao(
        _write(tmp_path / "ub.csv", TAOBAO),
        tmp_path / "out",
        catalog=cat,
        images=_images(tmp_path, [100, 101, 102]),
    )
    items = pd.read_parquet(tmp_path / "out" / "items.parquet").set_index("item_id")
    assert items.at[100, "title"] == "Watch" and items["image_path"].notna().all()


@pytest.mark.parametrize(
    ("csv", "line", "column", "expected"),
    [
        ("item_id,name,category\n1,a,b\n", 1, "title", "required column 'title'"),
        ("item_id,title,category,colour\n1,a,b,red\n", 1, "colour", "only known columns"),
        ("item_id,title,category,price\n1,a,b,-3\n", 2, "price", "positive finite price"),
        ("item_id,title,category,price\n1,a,b,inf\n", 2, "price", "positive finite price"),
        ("item_id,title,category,price\n1,a,b,2\n2,c,d,1e400\n", 3, "price", "positive finite price"),
        ("item_id,title,category\n1,a,b\n1,c,d\n", 3, "item_id", "unique item id"),
        ("item_id,title,category\n1,,b\n", 2, "title", "non-empty"),
        ("item_id,title,category\n3,a,b\n", 2, "image", "image named 3.png"),
        ("item_id,title,category,attributes\n1,a,b,colour:red\n", 2, "attributes", "JSON object"),
        ("item_id,title,category,box_x0\n1,a,b,1.5\n", 2, "box_x0", "[0, 1]"),
    ],
)
def test_catalog_malformed(tmp_path: Path, csv: str, line: int, column: str, expected: str) -> None:
    src = _write(tmp_path / "catalog.csv", csv)
    with pytest.raises(ImportFormatError) as e:
        import_catalog(src, tmp_path / "out", images=_images(tmp_path, [1]))
    assert (e.value.line, e.value.column) == (line, column)
    assert re.search(re.escape(expected), str(e.value))


def test_catalog_broken_image_is_refused(tmp_path: Path) -> None:
    imgs = _images(tmp_path, [1])
    (imgs / "1.png").write_bytes(b"not an image")
    src = _write(tmp_path / "catalog.csv", "item_id,title,category\n1,a,b\n")
    with pytest.raises(ImportFormatError, match="readable PNG"):
        import_catalog(src, tmp_path / "out", images=imgs)


def test_import_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError):
        import_taobao(_write(tmp_path / "ub.csv", TAOBAO), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_import_renames_into_place_and_a_failed_one_leaves_nothing(tmp_path: Path) -> None:
    imgs = _images(tmp_path, [1])
    src = _write(tmp_path / "catalog.csv", "item_id,title,category\n1,a,b\n2,c,d\n")
    with pytest.raises(ImportFormatError, match=r"image named 2\.png"):
        import_catalog(src, tmp_path / "out", images=imgs)
    # no half-copied images in `out` nor a staging folder beside it: the retry is not refused "not empty"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.csv", "imgs"]
    Image.new("RGB", (16, 16), "blue").save(imgs / "2.png")  # the user adds the missing image
    m = import_catalog(src, tmp_path / "out", images=imgs)
    assert m["images_copied"] == 2 and (tmp_path / "out" / "images" / "items" / "2.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.csv", "imgs", "out"]
    # an existing empty folder is a fine target too (the CLI's users often make it first)
    (tmp_path / "empty").mkdir()
    import_taobao(_write(tmp_path / "ub.csv", TAOBAO), tmp_path / "empty")
    assert (tmp_path / "empty" / "dataset.json").is_file()


def test_image_suffixes_match_in_any_case(tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (8, 8), "red").save(imgs / "1.JPG", format="JPEG")  # as cameras and Windows name them
    Image.new("RGB", (8, 8), "blue").save(imgs / "2.Png")
    src = _write(tmp_path / "catalog.csv", "item_id,title,category\n1,a,b\n2,c,d\n")
    import_catalog(src, tmp_path / "out", images=imgs)
    items = pd.read_parquet(tmp_path / "out" / "items.parquet").set_index("item_id")
    assert (
        items.at[1, "image_path"] == "images/items/1.jpg"
        and items.at[2, "image_path"] == "images/items/2.png"
    )
    assert all((tmp_path / "out" / p).is_file() for p in items["image_path"])


def test_catalog_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts the file with a BOM: it used to read as part of the name 'item_id'."""
    src = tmp_path / "catalog.csv"
    src.write_bytes("item_id,title,category\n1,Café mug,kitchen\n".encode("utf-8-sig"))
    import_catalog(src, tmp_path / "out")
    items = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert items["title"].tolist() == ["Café mug"]


@pytest.mark.parametrize("bad_line", [1, 2, 3000])
def test_undecodable_bytes_are_reported_on_their_line(tmp_path: Path, bad_line: int) -> None:
    """A Latin-1 byte in a UTF-8 catalog: a located ImportFormatError, not a raw UnicodeDecodeError (from
    the unguarded header read), on the right line (not one thousands of lines early, as decoding 8 KB
    ahead of the csv reader gave)."""
    lines = ["item_id,title,category"] + [f"{i},Item number {i},cat{i % 5}" for i in range(1, 4000)]
    data = [line.encode() for line in lines]
    data[bad_line - 1] = data[bad_line - 1].replace(b"t", b"\xe9", 1)  # Latin-1 e-acute
    src = tmp_path / "catalog.csv"
    src.write_bytes(b"\n".join(data) + b"\n")
    with pytest.raises(ImportFormatError) as e:
        import_catalog(src, tmp_path / "out")
    assert e.value.line == bad_line and "UTF-8" in str(e.value) and "0xe9" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_undecodable_bytes_deep_in_a_taobao_file(tmp_path: Path) -> None:
    rows = [f"{u},{i},1,pv,{1511544070 + i}".encode() for u in (1, 2) for i in range(1, 3000)]
    rows[4498] = b"\xff" + rows[4498]
    src = tmp_path / "ub.csv"
    src.write_bytes(b"\n".join(rows) + b"\n")
    with pytest.raises(ImportFormatError) as e:
        import_taobao(src, tmp_path / "out")
    assert e.value.line == 4499 and "0xff" in str(e.value)
