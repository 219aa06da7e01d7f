"""A/B analysis over the exposure log: per-arm CTR with intervals, lift, SRM, and an always-valid test.

- CTR per arm with a Wilson 95% interval (sound at low click rates, unlike the normal interval).
- Relative lift of each treatment over control, with a delta-method interval on log(CTR_t / CTR_c).
- Sample-ratio mismatch: assigned units (distinct users, the unit the hash splits) per arm against the
  configured weights, by an exact binomial test for two arms (a chi-square's p-value is too small when an
  arm expects only a few users, as a 1% ramp does early on) and a chi-square for more. A small p-value means
  the split is broken (assignment, logging or a bot), and no lift from it can be trusted. Counting exposures
  instead would be wrong: one request shows a whole slate, and one user makes many requests, so exposure
  counts are far noisier than a multinomial and SRM would fire on a healthy split.
- mSPRT (Johari, Pekelis & Walsh, "Always valid inference", 2017): a normal mixture likelihood ratio on the CTR
  difference, whose running p-value may be read at any time, as often as one likes, without inflating false
  positives (a fixed-horizon z-test read every minute would). Evaluated at `checkpoints` points along the
  exposure stream in time order; the running minimum is the always-valid p-value.

Everything is computed over one weight period (the stretch served under the current weights: after the last
ramp, before a pause or stop), not just SRM. Exposures from another period were split by other weights, or all
went to control: pooled with this period's, the arms would hold different mixes of time, and CTR drifts over
time (day and night, a campaign), so even an A/A test would read as a large, "significant" lift.

Users, not exposures, are randomised: a user's exposures are correlated (same taste, same slate), so every
variance here is the per-user cluster (delta-method) variance of the ratio sum(clicks) / sum(exposures), not
the Bernoulli one, which would understate it and make an A/A test "significant". Without a user_id column the
exposures are treated as independent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from adflow.metrics import cluster_var

Z95 = 1.959963984540054


def wilson(clicks: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = clicks / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (centre - half, centre + half)


def ratio_var(clicks: np.ndarray, units: np.ndarray | None) -> float:
    """Variance of CTR = sum(clicks) / n, clustered by `units` (delta method); Bernoulli when units is None."""
    n = len(clicks)
    if n == 0:
        return math.nan
    r = float(clicks.mean())
    iid = max(r * (1 - r), 1e-12) / n
    if units is None:
        return iid
    v = cluster_var(clicks, units)
    return max(v, iid * 0.5) if np.isfinite(v) else iid  # one user: nothing clusters, fall back to Bernoulli


def ctr_interval(clicks: np.ndarray, units: np.ndarray | None, z: float = Z95) -> tuple[float, float]:
    """Wilson interval of CTR at the effective sample size: n shrunk by the design effect of per-user
    clustering (ratio_var over the Bernoulli variance), so the interval is as wide as the users make it."""
    n, k = len(clicks), int(clicks.sum())
    if n == 0:
        return wilson(0, 0, z)
    var = ratio_var(clicks, units)
    deff = var / max((k / n) * (1 - k / n) / n, 1e-12) if 0 < k < n else 1.0
    return wilson(round(k / max(deff, 1.0)), max(1, round(n / max(deff, 1.0))), z)


def lift_interval(
    c_t: int,
    n_t: int,
    c_c: int,
    n_c: int,
    z: float = Z95,
    var_t: float | None = None,
    var_c: float | None = None,
) -> tuple[float, float, float]:
    """Relative lift CTR_t / CTR_c - 1 with a delta-method interval on the log ratio.

    `var_t`, `var_c`: variances of the two CTRs (clustered, see ratio_var); default Bernoulli. Without clicks in
    the treatment the lift is -100% but the log ratio has no interval; without clicks in the control (or no
    exposures) the lift itself is undefined.
    """
    if min(c_c, n_t, n_c) == 0:
        return (math.nan, math.nan, math.nan)
    if c_t == 0:
        return (-1.0, math.nan, math.nan)
    p_t, p_c = c_t / n_t, c_c / n_c
    log_ratio = math.log(p_t / p_c)
    v_t = p_t * (1 - p_t) / n_t if var_t is None else var_t
    v_c = p_c * (1 - p_c) / n_c if var_c is None else var_c
    se = math.sqrt(v_t / p_t**2 + v_c / p_c**2)
    return (p_t / p_c - 1, math.exp(log_ratio - z * se) - 1, math.exp(log_ratio + z * se) - 1)


def srm_pvalue(counts: list[int], weights: list[float]) -> float:
    """Goodness of fit of unit counts to the configured weights (arms with weight 0 dropped).

    Two arms: the exact binomial test. The chi-square approximation is anti-conservative when an arm expects few
    units (300 users at a 1% ramp expect 3 in treatment: alarms 3.6x as often as its alpha of 0.001 says), and
    the exact test costs nothing. More arms: chi-square.
    """
    pairs = [(c, w) for c, w in zip(counts, weights, strict=True) if w > 0]
    n = sum(c for c, _ in pairs)
    if n == 0 or len(pairs) < 2:
        return math.nan
    total_w = sum(w for _, w in pairs)
    if len(pairs) == 2:
        return float(min(1.0, stats.binomtest(pairs[1][0], n, pairs[1][1] / total_w).pvalue))
    expected = [n * w / total_w for _, w in pairs]
    return float(stats.chisquare([c for c, _ in pairs], expected).pvalue)


def msprt_pvalues(
    y_c: np.ndarray,
    y_t: np.ndarray,
    tau: float,
    checkpoints: int = 50,
    u_c: np.ndarray | None = None,
    u_t: np.ndarray | None = None,
    min_units: int = 30,
) -> np.ndarray:
    """Always-valid p-values of H0: CTR_t == CTR_c at `checkpoints` prefixes of two time-ordered 0/1 streams.

    At each prefix: theta = mean_t - mean_c, v = Var(mean_t) + Var(mean_c) (clustered by the unit ids u_* when
    given, else Bernoulli at the pooled rate), and the mixture likelihood ratio of theta ~ N(0, tau^2) against
    theta = 0 is  sqrt(v / (v + tau^2)) * exp(theta^2 tau^2 / (2 v (v + tau^2))). The p-value is the running
    minimum of 1 / LR, capped at 1. With unit ids, a prefix with fewer than `min_units` units in either arm is
    not evaluated (p stays where it was): a cluster variance from a handful of users is too noisy to plug in.
    """
    y_c, y_t = np.asarray(y_c, float), np.asarray(y_t, float)
    if len(y_c) == 0 or len(y_t) == 0:
        return np.ones(0)
    fractions = np.linspace(0, 1, checkpoints + 1)[1:]
    out, running = [], 1.0
    cum_c, cum_t = np.cumsum(y_c), np.cumsum(y_t)
    for f in fractions:
        n_c, n_t = max(1, round(f * len(y_c))), max(1, round(f * len(y_t)))
        m_c, m_t = cum_c[n_c - 1] / n_c, cum_t[n_t - 1] / n_t
        if u_c is not None and u_t is not None:
            if min(len(set(u_c[:n_c])), len(set(u_t[:n_t]))) < min_units:
                out.append(running)
                continue
            v = ratio_var(y_c[:n_c], u_c[:n_c]) + ratio_var(y_t[:n_t], u_t[:n_t])
        else:
            pooled = (cum_c[n_c - 1] + cum_t[n_t - 1]) / (n_c + n_t)
            var = max(pooled * (1 - pooled), 1e-12)  # under H0 both arms share one click rate
            v = var / n_c + var / n_t
        theta = m_t - m_c
        log_lr = 0.5 * math.log(v / (v + tau * tau)) + theta * theta * tau * tau / (2 * v * (v + tau * tau))
        running = min(running, math.exp(-log_lr) if log_lr > -700 else 1.0)
        out.append(min(1.0, running))
    return np.array(out)


@dataclass
class ArmResult:
    arm: str
    weight: float
    exposures: int
    clicks: int
    ctr: float
    ctr_lo: float
    ctr_hi: float
    lift: float = math.nan  # vs control; nan for control itself or a control without clicks (lift_text)
    lift_lo: float = math.nan
    lift_hi: float = math.nan
    p_value: float = math.nan  # always-valid (mSPRT) vs control


def lift_text(r: ArmResult, control: ArmResult) -> str:
    """The lift with its interval in words, saying why when either is undefined (an arm without clicks)."""
    if r.exposures == 0 or control.exposures == 0:
        return "undefined (an arm has no exposures)"
    if control.clicks == 0:
        return f"undefined ({control.arm} has no clicks; CTR {r.ctr:.4f} vs 0)"
    if r.clicks == 0:
        return f"{r.lift:+.1%} ({r.arm} has no clicks; no interval)"
    return f"{r.lift:+.1%} [{r.lift_lo:+.1%}, {r.lift_hi:+.1%}]"


def in_period(exposures: pd.DataFrame, period: tuple[float, float | None] | None) -> pd.DataFrame:
    """The exposures with ts in [start, end) (end None: open); all of them when period is None."""
    if period is None:
        return exposures
    lo, hi = period
    inside = exposures["ts"] >= lo
    if hi is not None:
        inside &= exposures["ts"] < hi
    return exposures[inside]


@dataclass
class Analysis:
    experiment: str
    control: str
    arms: list[ArmResult]
    srm_p: float
    srm_ok: bool
    alpha: float
    verdict: str
    p_path: dict[str, list[float]] = field(default_factory=dict)  # per treatment: running p at checkpoints
    period: tuple[float, float | None] | None = None  # [start, end) of the exposures analysed; None: all
    left_out: int = 0  # exposures outside the period (other weights, a pause, after a stop): not analysed

    def scope(self) -> str:
        """Which exposures the numbers cover, in words."""
        n = sum(r.exposures for r in self.arms)
        if self.period is None:
            return f"all {n:,} exposures"
        lo, hi = self.period
        when = f"{_utc(lo)} to {_utc(hi) if hi is not None else 'now'}"
        out = f"the {n:,} exposures served under the current weights ({when})"
        if self.left_out:
            out += f"; {self.left_out:,} from other weight periods (before a ramp, paused, stopped) left out"
        return out

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "scope": self.scope()}


def _utc(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def analyse(
    exposures: pd.DataFrame,
    weights: dict[str, float],
    control: str,
    experiment: str = "",
    alpha: float = 0.05,
    srm_alpha: float = 0.001,
    tau_rel: float = 0.2,
    checkpoints: int = 50,
    srm_window: tuple[float, float | None] | None = None,
    min_sample: int = 0,
) -> Analysis:
    """`exposures`: one row per exposure with columns arm, click (0/1), ts (for time order).

    `srm_window`: [start, end) of the weight period, the stretch served under `weights` (after the last ramp,
    before a pause or stop; ABStore.weight_period). Every number (CTR, lift, mSPRT and SRM) counts only those
    exposures (see the module docstring); Analysis.scope() says which. None: all of them.

    `tau_rel`: the mSPRT mixing scale as a share of control's CTR (the size of effect the test is tuned to find
    fastest; any effect is found eventually).

    `min_sample`: the exposures per arm the experiment planned before a decision (its `min_sample`). The
    p-values are valid at any time, so a significant reading before then is reported as such, but the
    verdict says that the plan is not complete (novelty effects, a weekly cycle: what the plan waits out).
    """
    missing = {"arm", "click", "ts"} - set(exposures.columns)
    if missing:
        raise ValueError(f"exposures lack columns {sorted(missing)}")
    unknown = set(exposures["arm"].unique()) - set(weights)
    if unknown:
        raise ValueError(f"exposures name arms {sorted(unknown)} that the experiment does not have")
    ex = in_period(exposures.sort_values("ts", kind="stable"), srm_window)
    clustered = "user_id" in ex.columns
    by_arm = {a: ex.loc[ex["arm"] == a, "click"].to_numpy(dtype=float) for a in weights}
    units = {a: (ex.loc[ex["arm"] == a, "user_id"].to_numpy() if clustered else None) for a in weights}
    c_y = by_arm[control]
    c_n, c_k = len(c_y), int(c_y.sum())
    c_var = ratio_var(c_y, units[control])
    tau = tau_rel * (c_k / c_n if c_n else 0.05) or 1e-3
    results, p_path = [], {}
    for arm, w in weights.items():
        y = by_arm[arm]
        n, k = len(y), int(y.sum())
        lo, hi = ctr_interval(y, units[arm])
        r = ArmResult(arm, w, n, k, k / n if n else math.nan, lo, hi)
        if arm != control:
            var = ratio_var(y, units[arm])
            r.lift, r.lift_lo, r.lift_hi = lift_interval(k, n, c_k, c_n, var_t=var, var_c=c_var)
            path = msprt_pvalues(c_y, y, tau, checkpoints, units[control], units[arm])
            p_path[arm] = path.tolist()
            r.p_value = float(path[-1]) if len(path) else math.nan
        results.append(r)
    # count the randomised units: each user once, in the arm it was assigned
    assigned = ex.drop_duplicates(["user_id", "arm"]) if clustered else ex
    srm_p = srm_pvalue([int((assigned["arm"] == r.arm).sum()) for r in results], [r.weight for r in results])
    srm_ok = not (srm_p < srm_alpha)
    c = next(r for r in results if r.arm == control)
    if not srm_ok:
        verdict = f"sample ratio mismatch (p={srm_p:.2g}): the split is broken, do not trust the lift"
    else:
        wins = [r for r in results if r.arm != control and r.p_value < alpha]
        if not wins:
            verdict = f"no significant difference yet (always-valid p >= {alpha})"
        else:
            # by CTR, not lift: the lift is undefined when control has no clicks, the difference never is
            best = max(wins, key=lambda r: r.ctr)
            direction = "better" if best.ctr > c.ctr else "worse"
            verdict = (
                f"{best.arm} is {direction} than {control}: lift {lift_text(best, c)}, "
                f"always-valid p={best.p_value:.3g}"
            )
    short = min(r.exposures for r in results)
    if srm_ok and short < min_sample:
        verdict += f"; the plan asks {min_sample:,} exposures per arm before a decision ({short:,} so far)"
    left_out = len(exposures) - len(ex)
    return Analysis(experiment, control, results, srm_p, srm_ok, alpha, verdict, p_path, srm_window, left_out)
