"""The backtest: history replayed period by period through the real pipeline, prequentially.

Each update policy gets its own freshrec home (landing area, ledger, MLflow store). Before a
period's data is used for anything but validation, the policy's current champion is scored on
it; then the continuous-training flow decides, trains and gates as it does in production. The
peers are refitted on the same accepted data before each period and scored the same way.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient

from data_checks.contract import DEFAULT_EVENT_TYPE, basket_keys, of_type, with_contract_columns
from data_checks.markup import md_code_block, md_text, plain_table
from flows.bootstrap import bootstrap as bootstrap_flow
from flows.continuous_training import continuous_training
from flows.validate_landing import validate_new_files
from models.settings import Settings
from models.baselines import ALS, TIFUKNN, UPCF, ItemKNN, RecentPopularity, RepeatPurchase
from models.evaluate import evaluate, hit_matrix, relevant_sets
from models.metrics import ndcg_at_k, recall_at_k
from models.files import read_parquet, temporary_beside
from models.recommender import Recommender
from tasks import ledger
from tasks.tracking import load_champion, mlflow_client, tracking_store

logger = logging.getLogger(__name__)

POLICIES = {
    "never": "never update (after bootstrap)",
    "retrain": "full retrain from scratch every period",
    "incremental": "incremental update every period",
    "triggered": "triggered incremental update (default thresholds)",
}
K = 20  # the cut-off of a report that does not name its own ("k"): every report before eval_k was read
POLICY_COLOURS = {"never": "#7f7f7f", "retrain": "#1f77b4", "incremental": "#2ca02c", "triggered": "#d62728"}
# Each policy's own state; the title vectors (title_cache_dir) are not: the policies share the base's cache.
DERIVED = ("landing_dir", "accepted_dir", "quarantine_dir", "reports_dir", "checkpoints_dir", "mlflow_artifacts_dir")


@dataclass(frozen=True)
class Period:
    label: str  # "2011-01", "week003"
    files: tuple[Path, ...]  # landing files: the period's interactions (and a catalog, if any)


@dataclass
class Track:
    """One policy's or one peer's results, period by period."""

    name: str
    description: str
    recall: dict[str, float] = field(default_factory=dict)
    ndcg: dict[str, float] = field(default_factory=dict)
    users: dict[str, int] = field(default_factory=dict)
    updates: int = 0  # promotions after the bootstrap
    decided_updates: int = 0  # batches the decision sent to training
    train_seconds: float = 0.0  # training wall time after the bootstrap (the flows' own clock)
    bootstrap_seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)  # champion version that served each period
    k: int = K  # the lists' cut-off: the settings' eval_k
    # Per period, each scored user's Recall@k and NDCG@k (for the paired comparisons).
    per_user: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    def record(self, label: str, users, recall: np.ndarray, ndcg: np.ndarray) -> None:
        self.per_user[label] = pd.DataFrame({"recall": recall, "ndcg": ndcg}, index=pd.Index(users, name="user_id"))
        self.recall[label], self.ndcg[label], self.users[label] = float(recall.mean()), float(ndcg.mean()), len(recall)

    def summary(self) -> dict:
        return {
            "description": self.description,
            f"mean_recall_at_{self.k}": float(np.mean(list(self.recall.values()))) if self.recall else None,
            f"mean_ndcg_at_{self.k}": float(np.mean(list(self.ndcg.values()))) if self.ndcg else None,
            f"recall_at_{self.k}": self.recall,
            f"ndcg_at_{self.k}": self.ndcg,
            "users": self.users,
            "updates": self.updates,
            "decided_updates": self.decided_updates,
            "train_seconds": round(self.train_seconds, 2),
            "bootstrap_seconds": round(self.bootstrap_seconds, 2),
            "champion_versions": self.versions,
        }


def policy_settings(base: Settings, policy: str, home: Path) -> Settings:
    """``base`` with its own state under ``home`` and the policy's update rule."""
    values = base.model_dump(exclude={*DERIVED, "home", "ledger_url", "mlflow_tracking_uri"})
    values |= {
        "landing_settle_seconds": 0,  # the backtest lands each period's files itself, whole, before it runs
        "home": home,
        "ledger_url": f"sqlite:///{(home / 'ledger.db').resolve()}",
        "mlflow_tracking_uri": f"sqlite:///{(home / 'mlflow.db').resolve()}",
    }
    if policy in ("retrain", "incremental"):
        values["volume_threshold_rows"] = 1  # every period with enough rows is an update
        values["init_from"] = "scratch" if policy == "retrain" else "champion"
    return Settings(**values)


def land(period: Period, settings: Settings) -> None:
    settings.landing_dir.mkdir(parents=True, exist_ok=True)
    for path in period.files:
        shutil.copyfile(path, settings.landing_dir / path.name)


def purchases(frame: pd.DataFrame, target_event: str = DEFAULT_EVENT_TYPE) -> pd.DataFrame:
    """The protocol's interactions: distinct (customer, item, order) events of the target type
    (purchases by default). A row without an order has its user's day as its order, so the
    next-basket peers see baskets in a source without orders too."""
    rows = with_contract_columns(of_type(frame, target_event))
    return rows.assign(order_id=basket_keys(rows)).drop_duplicates(["user_id", "item_id", "order_id"])


def score_lists(ranked: np.ndarray, relevant: pd.Series, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Per-user Recall@k and NDCG@k of ranked lists (rows in ``relevant``'s order)."""
    if relevant.empty:
        return np.empty(0), np.empty(0)
    hits = hit_matrix(ranked, relevant)
    n_relevant = relevant.map(len).to_numpy()
    return recall_at_k(hits, n_relevant, k), ndcg_at_k(hits, n_relevant, k)


def run_policy(policy: str, base: Settings, work: Path, bootstrap: list[Period], tests: list[Period], on_period=None) -> tuple[Track, dict[str, pd.DataFrame]]:
    """Bootstrap, then for each test period: land, validate, score the champion, and (unless
    the policy never updates) run continuous training. Returns the track and the accepted rows
    of every period (what the peers train on)."""

    home = work / policy
    if home.exists():
        shutil.rmtree(home)  # a backtest starts from nothing: no state of an earlier one leaks in
    settings = policy_settings(base, policy, home)
    track = Track(policy, POLICIES[policy], k=base.eval_k)
    accepted: dict[str, pd.DataFrame] = {}
    for period in bootstrap:
        land(period, settings)
    state = bootstrap_flow(settings, return_state=True)
    if not state.is_completed():
        raise RuntimeError(f"{policy}: the bootstrap failed: {state.message}")
    client = MlflowClient(settings.mlflow_tracking_uri)
    for outcome in state.result():
        if outcome.mlflow_run_id:
            track.bootstrap_seconds += client.get_run(outcome.mlflow_run_id).data.metrics.get("train_seconds", 0.0)
    for period in bootstrap:
        accepted[period.label] = _accepted_rows(settings, period)
    seen_users = pd.Index(pd.concat(accepted.values())["user_id"].unique())

    for period in tests:
        land(period, settings)
        validate_new_files(settings)
        rows = _accepted_rows(settings, period)
        accepted[period.label] = rows
        champion = load_champion.fn(settings)
        model = Recommender.load(champion.checkpoint_path)
        scored = evaluate(model, purchases(rows, base.target_event), seen_users, track.k, target_event=base.target_event)
        track.record(period.label, scored.user_ids, scored.per_user["recall"], scored.per_user["ndcg"])
        track.versions[period.label] = champion.version
        if policy != "never":
            state = continuous_training(settings, return_state=True)
            if not state.is_completed():
                raise RuntimeError(f"{policy} {period.label}: continuous training failed: {state.message}")
            for outcome in state.result():
                track.decided_updates += bool(outcome.update)
                track.updates += bool(outcome.promoted)
                if outcome.mlflow_run_id:
                    track.train_seconds += client.get_run(outcome.mlflow_run_id).data.metrics.get("train_seconds", 0.0)
        seen_users = seen_users.union(pd.Index(rows["user_id"].unique()))
        if on_period is not None:
            on_period(track, period)
    return track, accepted


def _accepted_rows(settings: Settings, period: Period) -> pd.DataFrame:
    names = {p.name for p in period.files}
    batches = [
        b for b in ledger.all_batches(ledger.connect(settings.ledger_url))
        if b.file_name in names and b.kind == "interactions" and b.accepted_path
    ]
    frames = [read_parquet(b.accepted_path) for b in batches]
    if not frames:
        raise RuntimeError(f"period {period.label}: no accepted interactions (see the ledger in {settings.home})")
    return pd.concat(frames, ignore_index=True)


# The next-basket peers' settings chosen on December 2011 of Online Retail, after every test month
# (benchmarks/tune_on_december.py, benchmarks/results/tuning_december_2011.json).
TUNED_TIFU = dict(neighbours=100, r_b=1.0, r_g=0.6, alpha=0.7, m=7)
TUNED_UPCF = dict(r=5, alpha=0.5, q=5)


def peers(include_als: bool = True) -> list:
    chosen = [RecentPopularity(), RepeatPurchase(), ItemKNN()]
    # Next-basket peers with the settings both papers publish (TaFeng, Dunnhumby), and tuned outside the test months.
    chosen += [TIFUKNN.published("TaFeng"), TIFUKNN.published("Dunnhumby"), TIFUKNN(**TUNED_TIFU)]
    chosen += [UPCF.published("TaFeng"), UPCF.published("Dunnhumby"), UPCF(**TUNED_UPCF)]
    if include_als:
        chosen.append(ALS())
    return chosen


def run_peers(
    accepted: dict[str, pd.DataFrame], bootstrap: list[Period], tests: list[Period], include_als: bool = True,
    target_event: str = DEFAULT_EVENT_TYPE, k: int = K,
) -> list[Track]:
    """Each peer refitted before every test period on all accepted events of the target type
    (purchases) before it: the peers are models of purchase histories. Lists are cut at ``k``."""
    tracks = []
    for peer in peers(include_als):
        track = Track(peer.name, peer.name, k=k)
        history = [purchases(accepted[p.label], target_event) for p in bootstrap]
        # Scored on the users freshrec is scored on: those with any accepted event before (a
        # peer knows only buyers, and lists recent popularity to the rest).
        seen = pd.Index(pd.concat([accepted[p.label] for p in bootstrap])["user_id"].unique())
        for period in tests:
            before = pd.concat(history, ignore_index=True)
            relevant = relevant_sets(purchases(accepted[period.label], target_event), seen)
            started = time.perf_counter()
            peer.fit(before, accepted[period.label]["event_time"].min())
            track.train_seconds += time.perf_counter() - started
            track.record(period.label, relevant.index, *score_lists(peer.recommend(relevant.index, k), relevant, k))
            history.append(purchases(accepted[period.label], target_event))
            seen = seen.union(pd.Index(accepted[period.label]["user_id"].unique()))
        tracks.append(track)
        logger.info("peer %s: mean Recall@%d %.4f", peer.name, k, np.mean(list(track.recall.values())))
    return tracks


def paired_difference(a: Track, b: Track, metric: str, resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
    """The mean over periods of the mean per-user difference ``a - b`` in ``metric``, with a
    paired bootstrap interval: each resample draws users with replacement within every period
    (both tracks scored the same users), so the interval reflects which users a period had."""
    rng = np.random.default_rng(seed)
    periods = [p for p in a.per_user if p in b.per_user]
    if not periods:
        return {"mean_difference": None, "low": None, "high": None, "periods": 0}
    means, draws = [], np.zeros(resamples)
    for label in periods:
        left, right = a.per_user[label][metric], b.per_user[label][metric]
        common = left.index.intersection(right.index)
        if len(common) != len(left) or len(common) != len(right):
            raise ValueError(f"{a.name} and {b.name} scored different users in {label}: a paired comparison needs the same ones")
        difference = (left.loc[common] - right.loc[common]).to_numpy()
        means.append(difference.mean())
        draws += difference[rng.integers(0, len(difference), size=(resamples, len(difference)))].mean(axis=1)
    draws /= len(periods)
    tail = (1 - level) / 2
    return {
        "mean_difference": float(np.mean(means)),
        "low": float(np.quantile(draws, tail)),
        "high": float(np.quantile(draws, 1 - tail)),
        "periods": len(periods),
    }


def significance(tracks: list[Track], of: str = "triggered", against_policies: tuple[str, ...] = ("retrain",)) -> dict:
    """``of`` against monthly retraining and every peer, on Recall@k and NDCG@k."""
    by_name = {t.name: t for t in tracks}
    if of not in by_name:
        return {}
    others = [t for t in tracks if t.name in against_policies or t.name not in POLICIES]
    return {
        other.name: {metric: paired_difference(by_name[of], other, metric) for metric in ("recall", "ndcg")}
        for other in others
    }


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


_PROTOCOL = (
    "Prequential: before a period's data is used for training, each policy's current champion is scored on it. "
    "Interactions are distinct (customer, item, order) purchases that passed validation; at period m models know "
    "only data before m; the relevant set of a user is the distinct items they bought in m, for users seen before m; "
    "items bought before are valid recommendations; candidates are all items the model can score (freshrec: every "
    "item seen before m plus the catalog's new items; peers: items seen before m). Recall@{k} = |top{k} ∩ R| / "
    "min({k}, |R|); NDCG@{k} with binary relevance; mean over users, then over periods. Policies run the real "
    "pipeline (validation, drift, decision, fine-tuning, promotion gate) in their own ledger and MLflow store; "
    "a policy's champion changes only when the gate promotes a challenger."
)


def protocol(k: int = K) -> str:
    """The scoring protocol in words, for lists cut at ``k``."""
    return _PROTOCOL.format(k=k)


def report(
    source: str, period: str, bootstrap: list[Period], tests: list[Period], tracks: list[Track], wall_seconds: float,
    target_event: str = DEFAULT_EVENT_TYPE, event_weights: dict[str, float] | None = None,
) -> dict:
    by_name = {t.name: t.summary() for t in tracks}
    cut_offs = {t.k for t in tracks} or {K}
    if len(cut_offs) > 1:
        raise ValueError(f"one report, one cut-off: the tracks are at k = {sorted(cut_offs)}")
    (k,) = cut_offs
    result = {
        "source": source,
        "period": period,
        "k": k,  # the cut-off of every Recall and NDCG below (the settings' eval_k)
        "target_event": target_event,  # what every Recall and NDCG scores
        "event_weights": event_weights,  # what each event type counted for in freshrec's training
        "bootstrap_periods": [p.label for p in bootstrap],
        "test_periods": [p.label for p in tests],
        "protocol": protocol(k),
        "machine": machine(),
        "wall_seconds": round(wall_seconds, 1),
        "results": by_name,
    }
    compared = significance(tracks)
    if compared:
        result["triggered_vs"] = compared
    retrain, triggered = by_name.get("retrain"), by_name.get("triggered")
    if retrain and triggered and retrain[f"mean_recall_at_{k}"]:
        result["triggered_vs_retrain"] = {
            "recall_share": triggered[f"mean_recall_at_{k}"] / retrain[f"mean_recall_at_{k}"],
            "train_time_share": triggered["train_seconds"] / retrain["train_seconds"] if retrain["train_seconds"] else None,
        }
    return result


def format_report(result: dict) -> str:
    k = result.get("k", K)
    rows = [("policy / peer", f"mean Recall@{k}", f"mean NDCG@{k}", "updates", "train s")]
    for name, r in result["results"].items():
        rows.append((name, f"{r[f'mean_recall_at_{k}']:.4f}", f"{r[f'mean_ndcg_at_{k}']:.4f}", str(r["updates"]), f"{r['train_seconds']:.1f}"))
    lines = [f"scored on {result.get('target_event', DEFAULT_EVENT_TYPE)} events", *plain_table(rows)]
    weights = result.get("event_weights")
    if weights:
        lines.append("freshrec trained with event weights " + ", ".join(f"{name} {value:g}" for name, value in weights.items()))
    share = result.get("triggered_vs_retrain")
    if share:
        time_share = f"{share['train_time_share']:.1%}" if share["train_time_share"] is not None else "-"
        lines.append(f"\ntriggered / retrain: {share['recall_share']:.1%} of the mean Recall@{k} for {time_share} of the training time")
    compared = result.get("triggered_vs")
    if compared:
        rows = [("triggered minus", f"Recall@{k} [95% interval]", f"NDCG@{k} [95% interval]")]
        for name, metrics in compared.items():
            rows.append((name, *(_interval(metrics[m]) for m in ("recall", "ndcg"))))
        lines += ["", *plain_table(rows)]
        lines.append("(mean over periods of the per-user difference; paired bootstrap over users within periods)")
    return "\n".join(lines)


def _interval(d: dict) -> str:
    if d["mean_difference"] is None:
        return "-"
    return f"{d['mean_difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def format_markdown(result: dict) -> str:
    """The report as the Prefect artifact shows it: the table as code, then the protocol."""
    return f"# Backtest on {md_text(result['source'])}\n\n{md_code_block(format_report(result))}\n{protocol(result.get('k', K))}\n"


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = result.get("triggered_vs") or {}
    k = result.get("k", K)
    figure, axes = plt.subplots(1, 2 if compared else 1, figsize=(16 if compared else 10, 6.5), squeeze=False,
                                gridspec_kw={"width_ratios": [1.8, 1.0]} if compared else None)
    axis = axes[0, 0]
    peer_colours = iter(plt.get_cmap("tab10").colors[4:] + plt.get_cmap("Dark2").colors)
    for name, r in result["results"].items():
        labels = list(r[f"recall_at_{k}"])
        policy = name in POLICIES
        axis.plot(
            labels, list(r[f"recall_at_{k}"].values()), label=name,
            color=POLICY_COLOURS[name] if policy else next(peer_colours, None),
            linestyle="-" if policy else "--", linewidth=2.6 if name == "triggered" else 1.6 if policy else 1.0,
            marker="o" if policy else ".", markersize=4 if policy else 3,
        )
    axis.set_xlabel(result["period"])
    axis.set_ylabel(f"Recall@{k}")
    axis.set_title(f"Recall@{k} per {result['period']} (prequential; peers dashed)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    if len(labels) > 16:  # weekly: every fourth label
        for i, tick in enumerate(axis.get_xticklabels()):
            tick.set_visible(i % 4 == 0)
    for tick in axis.get_xticklabels():
        tick.set_rotation(30)
    if compared:
        side = axes[0, 1]
        # The close ones: retraining and the peers within 0.05 (the others would squash the scale).
        names = [n for n, d in compared.items() if d["recall"]["mean_difference"] is not None and abs(d["recall"]["mean_difference"]) < 0.05][::-1]
        recall = [compared[n]["recall"] for n in names]
        means = [d["mean_difference"] or 0.0 for d in recall]
        errors = [[m - (d["low"] if d["low"] is not None else m) for m, d in zip(means, recall)],
                  [(d["high"] if d["high"] is not None else m) - m for m, d in zip(means, recall)]]
        side.errorbar(means, range(len(names)), xerr=errors, fmt="o", color=POLICY_COLOURS["triggered"], capsize=3)
        side.axvline(0.0, color="black", linewidth=0.8)
        side.set_yticks(range(len(names)), [n.replace(" (", "\n(", 1) if len(n) > 30 else n for n in names], fontsize=7)
        side.set_xlabel(f"triggered minus track: mean Recall@{k} difference")
        side.set_title("95% paired bootstrap intervals\n(retraining and the peers within 0.05)", fontsize=9)
        side.grid(alpha=0.3, axis="x")
    figure.suptitle(f"Backtest on {result['source']}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(result: dict, out: Path) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(out)
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    return out, plot(result, out.with_suffix(".png"))


def metric_key(name: str) -> str:
    """A track's name as an MLflow metric name: "item-kNN (cosine)" -> "item-kNN_cosine"; a
    peer's settings ("k=300, rb=0.9") keep their values, the characters MLflow refuses go."""
    return re.sub(r"[^0-9A-Za-z\-.]+", "_", name).strip("_")


def log_report(settings: Settings, result: dict, files: tuple[Path, Path]) -> str:
    """The report as an MLflow run in the experiment ``<experiment_name>-backtest``."""
    import mlflow

    _, experiment_id = mlflow_client(settings, f"{settings.experiment_name}-backtest")
    with tracking_store(settings), mlflow.start_run(experiment_id=experiment_id, run_name=f"backtest {result['source']}") as run:
        k = result.get("k", K)
        mlflow.log_params({"source": result["source"], "period": result["period"], "test_periods": len(result["test_periods"]), "k": k})
        for name, r in result["results"].items():
            key = metric_key(name)
            mlflow.log_metrics({
                f"{key}.mean_recall_at_{k}": r[f"mean_recall_at_{k}"], f"{key}.mean_ndcg_at_{k}": r[f"mean_ndcg_at_{k}"],
                f"{key}.train_seconds": r["train_seconds"],
            })
            for step, value in enumerate(r[f"recall_at_{k}"].values()):
                mlflow.log_metric(f"{key}.recall_at_{k}", value, step=step)
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="backtest")
        return run.info.run_id

