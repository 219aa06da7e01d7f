"""CTR benchmarks, as ratios against a baseline measured in the same session (no absolute targets).

    make bench            # tiny world; writes bench/results/ctr.json and bench/results/ctr.md

1. One CiUBM training epoch through Ray Train (2 workers x 1 thread, DDP over gloo) against the same model
   and data in a plain single-process loop with the same thread count (2). Goal: ratio <= 1.3. Ray's fixed
   costs (start-up, fit set-up) are reported apart from the per-epoch cost.
2. Feast online reads of the user behaviour features for 1 and 100 users against reading the same keys
   straight from the online store's SQLite table (no decoding): the price of Feast's read path.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from adflow import features as F
from adflow.config import load_settings
from adflow.data.world import generate
from adflow.models.ctr import CTRModel
from components.features.build.core import build
from components.training.ctr.core import plain_epoch, prepare, resolve_content, train

OUT = Path(__file__).parent / "results"


def plain_epochs(settings, data_dir: Path, epochs: int) -> list[float]:  # type: ignore[no-untyped-def]
    import pickle

    torch.set_num_threads(settings.placement.num_workers)  # the same total thread count as the Ray run
    with (data_dir / "encoder.pkl").open("rb") as f:
        enc = pickle.load(f)
    with np.load(data_dir / "train.npz") as z:
        train_arr = {k: z[k] for k in z.files}
    torch.manual_seed(0)
    model = CTRModel(settings.ctr_model, "ciubm", enc.sizes(), enc.content)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.ctr_train.lr)
    times = []
    for epoch in range(epochs):
        t = time.perf_counter()
        plain_epoch(model, opt, train_arr, settings.ctr_train.batch_size, epoch)
        times.append(time.perf_counter() - t)
    return times


def online_reads(fs, user_ids: list[int], repeats: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    names = ("hist_item_ids", "hist_ts", "clicks_1d", "clicks_7d", "clicks_total")
    refs = [f"user_behaviour:{n}" for n in names]
    fs.get_online_features(
        features=refs, entity_rows=[{"user_id": user_ids[0]}]
    )  # first call loads the registry
    feast_t = []
    for _ in range(repeats):
        t = time.perf_counter()
        fs.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in user_ids]).to_dict()
        feast_t.append(time.perf_counter() - t)
    keys = [
        serialize_entity_key(
            EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=u)]),
            entity_key_serialization_version=3,
        )
        for u in user_ids
    ]
    db = sqlite3.connect(fs.config.online_store.path)
    table = f"{fs.config.project}_user_behaviour"
    # the same keys and the same features Feast is asked for (the view holds more)
    q = (
        f"SELECT entity_key, feature_name, value FROM {table} WHERE entity_key IN ({','.join('?' * len(keys))})"
        f" AND feature_name IN ({','.join('?' * len(names))})"
    )
    raw_t = []
    for _ in range(repeats):
        t = time.perf_counter()
        rows = db.execute(q, [*keys, *names]).fetchall()
        raw_t.append(time.perf_counter() - t)
    assert rows, "the raw read found nothing: wrong table or keys"
    return statistics.median(feast_t), statistics.median(raw_t)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        s = load_settings(
            "tiny",
            "local",
            [f"placement.workspace={tmp / 'ws'}", "ctr_train.variants=[ciubm]", "ctr_train.epochs=3"],
        )
        s = s.resolved()
        generate(s.world, tmp / "world")
        build(s, tmp / "world", tmp / "features")
        s = resolve_content(s, tmp / "features")  # the candidate's embedding, as the CTR stage picks it
        # 1. Ray Train vs plain loop
        t0 = time.perf_counter()
        result = train(s, tmp / "features", tmp / "model")
        ray_total = time.perf_counter() - t0
        ray_epochs = [h["epoch_train_s"] for h in result.history]
        data = prepare(  # the tensors and content tables the Ray run trained on
            tmp / "features",
            tmp / "plain",
            s.features.seq_len,
            content=s.features.content_embedding,
            whitening=s.ctr_model.content_whitening,
        )
        plain = plain_epochs(s, data, len(ray_epochs))
        ray_epoch, plain_epoch = (
            statistics.median(ray_epochs[1:] or ray_epochs),
            statistics.median(plain[1:] or plain),
        )
        # 2. Feast online reads vs raw store reads
        fs = F.store(s.placement)
        users = pd.read_parquet(tmp / "world" / "users.parquet")["user_id"].tolist()
        reads = {n: online_reads(fs, users[:n], 50) for n in (1, 100)}
    res = {
        "ray_epoch_s": ray_epoch,
        "plain_epoch_s": plain_epoch,
        "ray_vs_plain_epoch_ratio": ray_epoch / plain_epoch,
        "ray_fit_total_s": ray_total,
        "stage_beyond_training_loops_s": ray_total - sum(ray_epochs),
        **{f"feast_online_{n}_users_p50_ms": 1000 * f for n, (f, _) in reads.items()},
        **{f"raw_sqlite_{n}_users_p50_ms": 1000 * r for n, (_, r) in reads.items()},
        **{f"feast_vs_raw_{n}_users_ratio": f / r for n, (f, r) in reads.items()},
    }
    (OUT / "ctr.json").write_text(json.dumps(res, indent=2))
    md = [
        "| benchmark | adflow | baseline | ratio |",
        "|---|---|---|---|",
        f"| CiUBM epoch: Ray Train (2x1 thread) vs plain loop (2 threads) | {ray_epoch:.2f} s | {plain_epoch:.2f} s | {res['ray_vs_plain_epoch_ratio']:.2f} (goal <= 1.3) |",
        # the whole stage call less its training loops: Ray's start-up, and what the plain loop also needs
        # (tensors prepared, per-epoch validation and checkpoints, the export)
        f"| CTR stage beyond its training loops (Ray start-up, data preparation, validation, checkpoints, export) | {res['stage_beyond_training_loops_s']:.1f} s | - | - |",
        *[
            f"| Feast online read, {n} user(s), p50 vs raw SQLite | {1000 * f:.2f} ms | {1000 * r:.3f} ms | {f / r:.1f} |"
            for n, (f, r) in reads.items()
        ],
    ]
    (OUT / "ctr.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
