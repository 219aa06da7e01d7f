"""The A/B report: summary.json for tools, index.html with plots for people.

Plots: CTR per arm over time (cumulative, with the band of the table's interval: Wilson at the per-user
effective sample size), each treatment's lift with its interval, the cumulative share of exposures per arm
against the configured weight (a drifting share is what SRM catches), and the always-valid p-value path. The
plots and the table cover the same exposures: the analysis's weight period (Analysis.scope()).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from adflow.ab.analysis import Analysis, ctr_interval, in_period, lift_text


def ctr_band(clicks: np.ndarray, units: np.ndarray | None, points: int = 100) -> tuple[np.ndarray, ...]:
    """The cumulative CTR's interval at up to `points` prefixes of a time-ordered 0/1 stream: (prefix end
    index, lo, hi), each prefix's interval the one the table gives for it (ctr_interval, per-user clustered;
    a Bernoulli band would be far too narrow when users differ). Prefixes, not every exposure: a clustered
    variance costs a pass over the prefix."""
    at = np.unique(np.linspace(0, len(clicks) - 1, min(points, len(clicks))).round().astype(int))
    band = [ctr_interval(clicks[: i + 1], None if units is None else units[: i + 1]) for i in at]
    lo, hi = (np.array(x, dtype=float) for x in zip(*band, strict=True)) if band else (np.zeros(0),) * 2
    return at, lo, hi


def write_report(
    a: Analysis, exposures: pd.DataFrame, out_dir: str | Path, context: dict[str, str] | None = None
) -> Path:
    """`context`: extra lines for people (what was tested, traffic, the simulator's true CTR per arm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(a.to_dict(), indent=2, default=float))
    # the analysis's weight period only: the table's numbers and the plots must describe the same exposures
    ex = in_period(exposures.sort_values("ts", kind="stable"), a.period).reset_index(drop=True)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    ax_ctr, ax_lift, ax_share, ax_p = axes.ravel()
    t0 = ex["ts"].min() if len(ex) else 0.0
    for r in a.arms:
        part = ex[ex["arm"] == r.arm]
        if part.empty:
            continue
        y = part["click"].to_numpy(dtype=float)
        ctr = np.cumsum(y) / np.arange(1, len(part) + 1)
        t = (part["ts"].to_numpy() - t0) / 60
        skip = min(100, len(part) - 1)  # the first few exposures' CTR is all noise and would set the scale
        ax_ctr.plot(t[skip:], ctr[skip:], label=r.arm)
        units = part["user_id"].to_numpy() if "user_id" in part.columns else None
        at, lo, hi = ctr_band(y, units)
        keep = at >= skip
        ax_ctr.fill_between(t[at[keep]], lo[keep], hi[keep], alpha=0.15)
        share = (ex["arm"] == r.arm).cumsum().to_numpy() / np.arange(1, len(ex) + 1)
        ax_share.plot((ex["ts"].to_numpy() - t0) / 60, share, label=f"{r.arm} (weight {r.weight:.2f})")
        ax_share.axhline(r.weight, ls=":", lw=0.8, color=ax_share.lines[-1].get_color())
    ax_ctr.set(title="CTR per arm (cumulative, 95% band, per-user clustered)", xlabel="minutes", ylabel="CTR")
    ax_share.set(title="share of exposures vs configured weight", xlabel="minutes", ylim=(0, 1))
    treat = [r for r in a.arms if r.arm != a.control and math.isfinite(r.lift)]
    for k, r in enumerate(treat):
        ax_lift.errorbar(
            [r.lift * 100], [k], xerr=[[(r.lift - r.lift_lo) * 100], [(r.lift_hi - r.lift) * 100]], fmt="o"
        )
    ax_lift.axvline(0, color="grey", lw=0.8)
    ax_lift.set(title=f"lift vs {a.control} (95% interval)", xlabel="%", yticks=range(len(treat)))
    ax_lift.set_yticklabels([r.arm for r in treat])
    for arm, path in a.p_path.items():
        ax_p.plot(np.linspace(0, 1, len(path) + 1)[1:], path, label=arm)
    ax_p.axhline(a.alpha, color="red", ls="--", lw=0.8, label=f"alpha {a.alpha}")
    ax_p.set(title="always-valid p-value (mSPRT)", xlabel="share of exposures seen", yscale="log")
    for ax in (ax_ctr, ax_share, ax_p):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ab.png", dpi=110)
    plt.close(fig)

    control = next(r for r in a.arms if r.arm == a.control)
    rows = "".join(
        f"<tr><td>{html.escape(r.arm)}</td><td>{r.weight:.2f}</td><td>{r.exposures}</td><td>{r.clicks}</td>"
        f"<td>{r.ctr:.4f} [{r.ctr_lo:.4f}, {r.ctr_hi:.4f}]</td>"
        + (
            "<td>-</td><td>-</td>"
            if r.arm == a.control
            # the p-value is shown even when the lift is undefined (an arm without clicks): it still holds
            else f"<td>{html.escape(lift_text(r, control))}</td><td>{r.p_value:.3g}</td>"
        )
        + "</tr>"
        for r in a.arms
    )
    extra = "".join(f"<p><b>{html.escape(k)}</b>: {html.escape(v)}</p>" for k, v in (context or {}).items())
    colour = "#cf222e" if not a.srm_ok else "#1a7f37" if "better" in a.verdict else "#444"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>A/B {html.escape(a.experiment)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:70em}}td,th{{padding:.3em .8em;border-bottom:1px solid #ddd}}
h2{{color:{colour}}}</style></head><body><h1>A/B test {html.escape(a.experiment)}</h1>
<h2>{html.escape(a.verdict)}</h2>{extra}
<p><b>exposures analysed</b>: {html.escape(a.scope())}</p>
<p>Sample-ratio check: p = {a.srm_p:.3g} ({"ok" if a.srm_ok else "MISMATCH"}). P-values are always valid
(mSPRT): they may be read at any time during the test.</p>
<table><tr><th>arm</th><th>weight</th><th>exposures</th><th>clicks</th><th>CTR [95%]</th><th>lift [95%]</th>
<th>p</th></tr>{rows}</table><p><img src="ab.png" style="max-width:100%"></p></body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"
