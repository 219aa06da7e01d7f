"""Offline evaluation gate: the candidate against the current champion, on the same held-out split.

The gate passes only when the candidate beats the champion by `gate.margin` on `gate.metric` (GAUC by
default) and does not regress the guards (logloss up by at most `max_logloss_increase`, cold-start AUC down
by at most `max_cold_auc_drop`). With no champion yet, the candidate must reach `gate.floor`. The decision,
its reason and the full comparison (candidate, DIN baseline, champion, oracle) go to report.md/.html.
Beside them: a reference logistic regression on hand-crossed features (adflow/models/reference.py), which
shows how much of the gap to the oracle the data itself leaves open, and the same regression with the category
alone, whose difference is the content headroom (what content beyond the category can buy on this data, the
scale for CiUBM's lead over DIN and for MOON's exchange rate), and with the category plus each content
embedding's similarities (what that embedding buys, without seed noise). All are scored, never gated on.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from adflow.config import GateConfig, Settings
from adflow.metrics import calibration, ctr_report, paired_auc_diff
from adflow.progress import log
from components.training.ctr.core import model_paths, resolve_content

STAGE = "gate"


@dataclass
class GateDecision:
    passed: bool
    reason: str
    metric: str
    candidate: dict[str, float]
    champion: dict[str, float] | None = None
    champion_version: int | None = None
    models: dict[str, dict[str, float]] = field(default_factory=dict)  # every scored model, for the table
    # candidate minus each baseline variant on the same impressions: {"din": {"auc": {diff, lo, hi}, ...}}
    versus: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    # MOON's exchange rate: CTR-model gain per image-search recall gain (MOON vs the baseline encoder)
    exchange: dict[str, float] = field(default_factory=dict)
    content: str = ""  # the content embedding the candidate reads (features.content_embedding, resolved)
    report_md: str = ""
    report_html: str = ""


def decide(cfg: GateConfig, cand: dict[str, float], champ: dict[str, float] | None) -> tuple[bool, str]:
    """The gate rule as a plain function: (passed, reason)."""
    m = cfg.metric
    if champ is None:
        ok = cand[m] >= cfg.floor
        return (
            ok,
            f"no champion yet: {m} {cand[m]:.4f} {'reaches' if ok else 'is below'} the floor {cfg.floor:.4f}",
        )
    gain = cand[m] - champ[m]
    if not math.isfinite(gain):  # NaN compares False to everything: it must not fall through to a pass
        return (
            False,
            f"{m} is undefined on this test split (candidate {cand[m]:.4f}, champion {champ[m]:.4f}): "
            "no decision can be made on it",
        )
    if gain < cfg.margin:
        return (
            False,
            f"{m} {cand[m]:.4f} vs champion {champ[m]:.4f}: gain {gain:+.4f} is below the margin {cfg.margin:.4f}",
        )
    worse_ll = cand["logloss"] - champ["logloss"]
    if worse_ll > cfg.max_logloss_increase:
        return (
            False,
            f"{m} gain {gain:+.4f}, but logloss rises {worse_ll:+.4f} (tolerance {cfg.max_logloss_increase:.4f})",
        )
    c_new, c_old = cand.get("cold_auc", math.nan), champ.get("cold_auc", math.nan)
    if math.isfinite(c_new) and math.isfinite(c_old) and c_old - c_new > cfg.max_cold_auc_drop:
        return (
            False,
            f"{m} gain {gain:+.4f}, but cold-start AUC drops {c_old - c_new:.4f} (tolerance {cfg.max_cold_auc_drop:.4f})",
        )
    return (
        True,
        f"{m} {cand[m]:.4f} beats champion {champ[m]:.4f} by {gain:+.4f} (margin {cfg.margin:.4f}); guards hold",
    )


def score(predictor: Any, test: pd.DataFrame, cold: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    return score_predictions(test, predictor.predict(test), cold)


def score_predictions(
    test: pd.DataFrame, p: np.ndarray, cold: np.ndarray
) -> tuple[dict[str, float], np.ndarray]:
    y = test["click"].to_numpy()
    oracle = test["oracle_p"].to_numpy(float) if "oracle_p" in test else None
    return ctr_report(test["user_id"].to_numpy(), y, p, cold, oracle), p


REFERENCE = "reference (LR, crossed features)"
REFERENCE_CATEGORY = "reference_category (LR, category alone)"


def reference(
    features_dir: str | Path, settings: Settings, test: pd.DataFrame
) -> dict[str, np.ndarray] | None:
    """The reference model fitted on train + val and scored on the test split: with every catalog attribute
    ("all"), with the category alone ("category"), and with the category and each content embedding's
    similarity summaries (the embedding's name); None for a feature set built before the catalog travelled
    with it."""
    from adflow.models.reference import ReferenceModel, content_table

    src = Path(features_dir)
    if not (src / "catalog.parquet").exists():
        return None
    train = pd.concat([pd.read_parquet(src / f"{s}.parquet") for s in ("train", "val")], ignore_index=True)
    catalog = pd.read_parquet(src / "catalog.parquet")
    seq_len = settings.features.seq_len
    out = {
        name: ReferenceModel.fit(train, catalog, seq_len, attributes=attrs).predict(test)
        for name, attrs in (("all", None), ("category", ["category"]))
    }
    content = src / "tables" / "item_content.parquet"
    if content.exists():
        table = pd.read_parquet(content)
        for col in (c for c in table.columns if c.endswith("_embedding")):
            sims = content_table(table, col, settings.ctr_model.content_whitening)  # as CiUBM reads it
            ref = ReferenceModel.fit(train, catalog, seq_len, attributes=["category"], content=sims)
            out[col.removesuffix("_embedding")] = ref.predict(test)
    return out


def _plots(out: Path, y: np.ndarray, preds: dict[str, np.ndarray]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(1, 2, figsize=(10, 4.2))
    for name, p in preds.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax[0].plot(fpr, tpr, label=name)
        cal = calibration(y, p)
        ax[1].plot(cal["predicted"], cal["observed"], marker="o", label=name)
    ax[0].plot([0, 1], [0, 1], "k:", lw=0.8)
    ax[0].set(title="ROC (test split)", xlabel="false positive rate", ylabel="true positive rate")
    hi = max(float(np.max(p)) for p in preds.values())
    ax[1].plot([0, hi], [0, hi], "k:", lw=0.8)
    ax[1].set(title="Calibration by decile", xlabel="predicted CTR", ylabel="observed CTR")
    for a in ax:
        a.legend(fontsize=8)
    fig.tight_layout()
    path = out / "roc_calibration.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


COLUMNS = ("auc", "gauc", "logloss", "ece", "cold_auc", "oracle_auc")


def _table_md(models: dict[str, dict[str, float]]) -> str:
    rows = ["| model | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, m in models.items():
        rows.append(
            f"| {name} | "
            + " | ".join(f"{m[c]:.4f}" if c in m and math.isfinite(m[c]) else "-" for c in COLUMNS)
            + " |"
        )
    return "\n".join(rows)


def exchange_rate(
    features_dir: str | Path, settings: Settings, models: dict[str, dict[str, float]]
) -> dict[str, float]:
    """MOON Embedding's exchange rate: (CiUBM on MOON - CiUBM on text) AUC and GAUC per recall@K gained by
    MOON over the baseline encoder, on the same split. Empty when the run lacks either CiUBM."""
    path = Path(features_dir) / "moon.json"
    moon = json.loads(path.read_text()) if path.exists() else {}
    recall = moon.get("image_recall", {})
    if not recall or "baseline" not in recall or moon.get("served") not in recall:
        return {}
    by_source: dict[str, dict[str, float]] = {}
    for label, m in models.items():
        v = label.split(" ")[0]
        if v.startswith("ciubm"):
            by_source.setdefault(
                settings.features.content_embedding if v == "ciubm" else v.removeprefix("ciubm_"), m
            )
    if not {"text", "moon"} <= set(by_source):
        return {}
    d_recall = recall[moon["served"]] - recall["baseline"]
    out = {"recall_gain": d_recall, "recall_k": float(moon["recall_k"])}
    for k in ("auc", "gauc"):
        gain = by_source["moon"][k] - by_source["text"][k]
        out[f"{k}_gain"] = gain
        out[f"exchange_rate_{k}"] = gain / d_recall if abs(d_recall) > 1e-9 else math.nan
    if "text_moon" in by_source:  # MOON added beside the text embedding rather than replacing it
        for k in ("auc", "gauc", "cold_auc"):
            out[f"text_moon_{k}_gain"] = by_source["text_moon"].get(k, math.nan) - by_source["text"].get(
                k, math.nan
            )
    return out | content_probes(features_dir, settings.moon_train.duplicate_keys)


def content_probes(features_dir: str | Path, keys: list[str]) -> dict[str, float]:
    """{"probe_<embedding>_<key>": accuracy, "catalog_values_<key>": distinct values}: how well a linear
    probe reads each attribute that defines what a product looks like (the world's click model weighs
    category, colour and style) from each content embedding of the catalog. Read beside the exchange rate:
    an embedding that drops an attribute the users' tastes follow costs the CTR model, whatever its
    image-search recall (on the tiny world, CiUBM on one-hot category, colour and style is as good as on
    MiniLM, a little better in GAUC; on MOON, which keeps little of the style, worse: docs/field-notes.md)."""
    from adflow.metrics import linear_probe

    root = Path(features_dir)
    content, catalog = root / "tables" / "item_content.parquet", root / "catalog.parquet"
    if not content.exists() or not catalog.exists():
        return {}
    from adflow.models.reference import catalog_attributes

    attrs = catalog_attributes(pd.read_parquet(catalog)).set_index("item_id")
    labels = {k: attrs[k] for k in keys if k in attrs}
    emb = pd.read_parquet(content).set_index("item_id")
    out = {f"catalog_values_{k}": float(lab.nunique()) for k, lab in labels.items()}  # chance ~1 / this
    for col in (c for c in emb.columns if c.endswith("_embedding")):
        have = emb[col].map(len) > 0
        x = np.stack(emb.loc[have, col].to_numpy()) if have.any() else None
        for k, lab in labels.items():
            y = lab.reindex(emb.index[have])
            ok = y.notna().to_numpy()
            if x is not None and ok.sum():
                out[f"probe_{col.removesuffix('_embedding')}_{k}"] = linear_probe(x[ok], y[ok].astype(str))
    return out


def _exchange_lines(d: GateDecision) -> list[str]:
    x = d.exchange
    if not x:
        return []
    k = int(x["recall_k"])
    return (
        [
            f"Exchange rate (MOON vs baseline encoder): image-search recall@{k} {x['recall_gain']:+.4f} buys "
            f"CiUBM AUC {x['auc_gain']:+.4f} and GAUC {x['gauc_gain']:+.4f}: ΔAUC/Δrecall "
            f"{x['exchange_rate_auc']:+.3f}, ΔGAUC/Δrecall {x['exchange_rate_gauc']:+.3f}."
        ]
        + (
            [
                f"MOON beside MiniLM (CiUBM on both) vs MiniLM alone: AUC {x['text_moon_auc_gain']:+.4f}, "
                f"GAUC {x['text_moon_gauc_gain']:+.4f}, cold-start AUC {x['text_moon_cold_auc_gain']:+.4f}."
            ]
            if "text_moon_auc_gain" in x
            else []
        )
        + _probe_lines(x)
    )


def _probe_lines(x: dict[str, float]) -> list[str]:
    probes = {k.removeprefix("probe_"): v for k, v in x.items() if k.startswith("probe_")}
    names = {"text": "MiniLM", "moon": "MOON"}
    parts = []
    for emb in dict.fromkeys(k.split("_")[0] for k in probes):
        got = ", ".join(f"{k.split('_', 1)[1]} {v:.2f}" for k, v in probes.items() if k.split("_")[0] == emb)
        parts.append(f"{names.get(emb, emb)} {got}")
    if not parts:
        return []
    values = ", ".join(
        f"{k.removeprefix('catalog_values_')} {v:.0f}"
        for k, v in x.items()
        if k.startswith("catalog_values_")
    )
    return [
        "What each content embedding keeps of the catalog's attributes (5-fold linear-probe accuracy; "
        f"distinct values: {values}): " + "; ".join(parts) + "."
    ]


def _versus_lines(d: GateDecision) -> list[str]:
    """One line per baseline: the candidate's AUC and cold-start AUC lead, with its bootstrap interval."""
    lines = []
    for base, diffs in d.versus.items():
        parts = [
            f"{k.replace('_', '-')} {v['diff']:+.4f} (95% CI {v['lo']:+.4f} to {v['hi']:+.4f})"
            for k, v in diffs.items()
        ]
        lines.append(f"Candidate minus {base}, same impressions, user-cluster bootstrap: " + "; ".join(parts))
    return lines


def _reference_lines(d: GateDecision) -> list[str]:
    ref = d.models.get(REFERENCE)
    if ref is None:
        return []
    line = (
        "Reference: a logistic regression on hand-crossed features (the history's share of the target's "
        "category and attributes, segment x creative factors, position, item CTR) reaches AUC "
        f"{ref['auc']:.4f}; candidate minus reference {d.candidate['auc'] - ref['auc']:+.4f}"
    )
    if "oracle_auc" in ref:
        line += (
            f"; oracle minus reference {ref['oracle_auc'] - ref['auc']:+.4f} (the truth knows each user's "
            "taste, every model estimates it from the last clicks)"
        )
    lines = [line + "."]
    alone = d.models.get(REFERENCE_CATEGORY)
    din = next((m for label, m in d.models.items() if label.startswith("din ")), None)
    if alone is not None:
        line = (
            "Content headroom: the reference less the same regression with the category alone (what the ID "
            f"path knows too): AUC {ref['auc'] - alone['auc']:+.4f}, cold-start AUC "
            f"{ref.get('cold_auc', math.nan) - alone.get('cold_auc', math.nan):+.4f}. That is what the rest of "
            "the catalog's content, as the last clicks reveal each user's taste for it, is worth to a "
            "well-specified model on this data"
        )
        if din is not None:
            line += (
                f"; candidate less DIN: AUC {d.candidate['auc'] - din['auc']:+.4f}, cold-start AUC "
                f"{d.candidate.get('cold_auc', math.nan) - din.get('cold_auc', math.nan):+.4f}"
            )
        lines.append(line + ".")
        sims = [
            f"{label.split(' ')[0].removeprefix('reference_')} AUC {m['auc'] - alone['auc']:+.4f}, cold-start "
            f"{m.get('cold_auc', math.nan) - alone.get('cold_auc', math.nan):+.4f}"
            for label, m in d.models.items()
            if label.startswith("reference_") and "similarities" in label
        ]
        if sims:
            lines.append(
                "What each content embedding's similarities (mean, max and top-5 cosine of the target to the "
                "last clicks, in the embeddings as CiUBM reads them) buy the same regression over the "
                "category alone: "
                + "; ".join(sims)
                + ". A fit, not a training run: no seed noise, unlike the CTR models' comparison of embeddings."
            )
    return lines


def write_report(out: Path, d: GateDecision, plots: list[str], test_rows: int) -> None:
    verdict = "PASSED" if d.passed else "REJECTED"
    md = "\n".join(
        [
            f"# Gate: {verdict}",
            "",
            f"**Reason:** {d.reason}",
            "",
            f"Held-out test split: {test_rows} impressions. Champion: "
            + (f"version {d.champion_version}" if d.champion_version else "none")
            + (f". The candidate reads the {d.content} content embedding." if d.content else ""),
            "",
            _table_md(d.models),
            "",
            *_versus_lines(d),
            "",
            *_reference_lines(d),
            "",
            *_exchange_lines(d),
            "",
            *[f"![{p}]({p})" for p in plots],
        ]
    )
    (out / "report.md").write_text(md + "\n")
    rows = "".join(
        "<tr><td>"
        + html.escape(n)
        + "</td>"
        + "".join(f"<td>{m[c]:.4f}</td>" if c in m and math.isfinite(m[c]) else "<td>-</td>" for c in COLUMNS)
        + "</tr>"
        for n, m in d.models.items()
    )
    colour = "#1a7f37" if d.passed else "#cf222e"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Gate {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}td,th{{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}}
td:first-child,th:first-child{{text-align:left}}h1{{color:{colour}}}</style></head><body>
<h1>Gate: {verdict}</h1><p><b>Reason:</b> {html.escape(d.reason)}</p>
<p>Held-out test split: {test_rows} impressions. Champion: {f"version {d.champion_version}" if d.champion_version else "none"}.{f" The candidate reads the {d.content} content embedding." if d.content else ""}</p>
<table><tr><th>model</th>{"".join(f"<th>{c}</th>" for c in COLUMNS)}</tr>{rows}</table>
{"".join(f"<p>{html.escape(line)}</p>" for line in _versus_lines(d) + _reference_lines(d) + _exchange_lines(d))}
{"".join(f'<p><img src="{p}" style="max-width:100%"></p>' for p in plots)}</body></html>"""
    (out / "index.html").write_text(page)
    d.report_md, d.report_html = str(out / "report.md"), str(out / "index.html")


def evaluate(
    settings: Settings,
    features_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    tracking_uri: str,
) -> GateDecision:
    import torch

    from adflow.registry import CHAMPION, alias_version, load
    from adflow.tracking import client

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = resolve_content(settings, features_dir)  # what "ciubm" read in the CTR stage
    test = pd.read_parquet(Path(features_dir) / "test.parquet")
    paths = model_paths(model_dir)
    cand_name = settings.registry.candidate_variant
    candidate = torch.load(paths[cand_name], weights_only=False)
    cold = candidate.encoder.is_cold(test)  # items the candidate never saw: one cold set for every model
    models: dict[str, dict[str, float]] = {}
    preds: dict[str, np.ndarray] = {}
    for variant, path in paths.items():
        pred = candidate if variant == cand_name else torch.load(path, weights_only=False)
        (
            models[f"{variant} (candidate)" if variant == cand_name else f"{variant} (baseline)"],
            preds[variant],
        ) = score(pred, test, cold)
    cand = models[f"{cand_name} (candidate)"]
    users, y = test["user_id"].to_numpy(), test["click"].to_numpy()
    versus = {
        v: {
            "auc": paired_auc_diff(users, y, preds[cand_name], preds[v]),
            "cold_auc": paired_auc_diff(users[cold], y[cold], preds[cand_name][cold], preds[v][cold]),
        }
        for v in paths
        if v != cand_name
    }
    c = client(tracking_uri)
    name = settings.registry.model_name
    champ_version = alias_version(c, name, CHAMPION)  # None: no such model or alias yet
    champ = None
    if champ_version is not None:
        champ, preds[f"champion v{champ_version}"] = score(load(tracking_uri, name, CHAMPION), test, cold)
        models[f"champion v{champ_version}"] = champ
    refs = reference(features_dir, settings, test)
    if refs is not None:
        models[REFERENCE], preds["reference"] = score_predictions(test, refs["all"], cold)
        models[REFERENCE_CATEGORY], _ = score_predictions(test, refs["category"], cold)  # not plotted
        for name, p in refs.items():
            if name not in ("all", "category"):
                models[f"reference_{name} (LR, category + {name} similarities)"], _ = score_predictions(
                    test, p, cold
                )
    if "oracle_auc" in cand:
        models["oracle (truth)"] = {
            "auc": cand["oracle_auc"],
            "cold_auc": cand.get("oracle_cold_auc", math.nan),
        }
    passed, reason = decide(settings.gate, cand, champ)
    d = GateDecision(passed, reason, settings.gate.metric, cand, champ, champ_version, models, versus)
    d.exchange = exchange_rate(features_dir, settings, models)
    d.content = settings.features.content_embedding
    write_report(out, d, _plots(out, test["click"].to_numpy(), preds), len(test))
    (out / "decision.json").write_text(json.dumps(asdict(d), indent=2, default=float))
    log(STAGE, f"{'PASSED' if passed else 'REJECTED'}: {reason}")
    return d


def run(
    settings_json: str,
    tracking_uri: str,
    parent_run_id: str,
    features_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
) -> bool:
    from adflow.config import settings_from_json
    from adflow.tracking import NOTE_TAG, stage_run

    s = settings_from_json(settings_json)
    with stage_run(STAGE, tracking_uri, parent_run_id, s.placement.mlflow_experiment) as sr:
        sr.params({"gate": s.gate.model_dump(), "model_name": s.registry.model_name})
        d = evaluate(s, features_dir, model_dir, out_dir, tracking_uri)
        flat: dict[str, float] = {"passed": float(d.passed)}
        for label, m in d.models.items():
            key = label.split(" ")[0] if not label.startswith("champion") else "champion"
            flat |= {f"{key}_{k}": v for k, v in m.items() if isinstance(v, float) and math.isfinite(v)}
        for base, diffs in d.versus.items():
            for k, v in diffs.items():
                flat |= {f"lead_vs_{base}_{k}_{q}": x for q, x in v.items() if math.isfinite(x)}
        flat |= {k: v for k, v in d.exchange.items() if math.isfinite(v)}
        sr.metrics(flat)
        sr.tag(NOTE_TAG, ("PASSED: " if d.passed else "REJECTED: ") + d.reason)
        sr.log_file(out_dir, "gate_report")
        sr.artifact("report", d.report_html)
    return d.passed
