"""The one settings object: every path, URI and threshold freshrec uses.

Settings come from the worker's environment: variables prefixed with ``FRESHREC_`` set any field
(``FRESHREC_HOME`` moves all state), and the standard ``MLFLOW_TRACKING_URI`` is honoured. A
deployment run may change only the fields of ``RUN_OVERRIDABLE`` (thresholds and training knobs,
as ``RunOverrides``, the form the Prefect UI shows); paths, stores, credentials, the Dask address
and the data contract stay the worker's (docs/security.md). The two store URLs and the MLflow
server's password may come from Prefect Secret blocks, and a password in a store URL is masked
wherever settings are serialized, so it never reaches a flow run's parameters in Prefect's database.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Annotated, Literal, Optional, Union, get_args, get_origin
from urllib.parse import parse_qsl, urlencode, urlsplit

import annotated_types
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, create_model, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Query parameters of a store URL whose values are credentials.
_SECRET_QUERY_KEY = re.compile(r"pass|secret|token|key|credential|auth", re.IGNORECASE)


def redact(url: str | None) -> str | None:
    """``url`` with its password (and any credential-like query value) replaced by ``***``: what
    messages, logs and serialized settings show of a store URL."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"  # unparseable: show nothing of it
    masked = url
    userinfo, _, host = parts.netloc.rpartition("@")
    if ":" in userinfo:
        masked = masked.replace(f"{parts.netloc}", f"{userinfo.split(':', 1)[0]}:***@{host}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(_SECRET_QUERY_KEY.search(k) for k, _ in pairs):
            query = urlencode([(k, "***" if _SECRET_QUERY_KEY.search(k) else v) for k, v in pairs], safe="*/:")
            masked = masked.split("?", 1)[0] + "?" + query + (f"#{parts.fragment}" if parts.fragment else "")
    return masked


def secret_block(name: str) -> str:
    """The value of the Prefect Secret block ``name`` (read from the Prefect API at run time)."""
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(name).get())
    except ValueError as error:  # Prefect: "Unable to find block document named ..."
        raise ValueError(f"no Prefect Secret block named {name!r} could be read: {error}") from None


# Unset, these fields derive from `home`: the directories (field -> subdirectory) and the SQLite stores
# (field -> database file).
_HOME_DIRS = {
    "landing_dir": "landing",
    "accepted_dir": "accepted",
    "quarantine_dir": "quarantine",
    "reports_dir": "reports",
    "checkpoints_dir": "checkpoints",
    "mlflow_artifacts_dir": "mlartifacts",
    "title_cache_dir": "cache/text",
}
_HOME_STORES = {"ledger_url": "ledger.db", "mlflow_tracking_uri": "mlflow.db"}


class Settings(BaseSettings):
    # hide_input_in_errors: a rejected value (a malformed URL with its password) is never echoed.
    model_config = SettingsConfigDict(env_prefix="FRESHREC_", extra="forbid", hide_input_in_errors=True)

    # --- where state lives ---------------------------------------------------------------
    home: Path = Field(
        default=Path(".freshrec"),
        description="The directory that holds a default run's state (the `*_dir` fields, the ledger and the MLflow store "
        "derive from it when unset), so a demo is one `rm -r` away from clean.",
    )
    landing_dir: Path | None = Field(
        default=None,
        description="Where batch files arrive. freshrec only reads it: raw data stays as it came.",
    )
    accepted_dir: Path | None = Field(
        default=None,
        description="Validated rows, one Parquet file per batch: what training reads.",
    )
    quarantine_dir: Path | None = Field(
        default=None,
        description="Bad rows and rejected batches, each with its reason, so nothing is dropped silently.",
    )
    reports_dir: Path | None = Field(
        default=None,
        description="Drift reports (HTML), also logged to MLflow.",
    )
    checkpoints_dir: Path | None = Field(
        default=None,
        description="Challenger checkpoints, kept so a run can be inspected or resumed.",
    )
    title_cache_dir: Path | None = Field(
        default=None,
        description="The item titles' MiniLM vectors, each title encoded once. Homes on one machine (a staging and a "
        "production home, the backtest's) may share one directory: writers lock it and rename whole files into place.",
    )
    keep_model_files: int = Field(
        default=3, ge=1, le=1000,
        description="Model files kept per kind in `checkpoints/` and the champion cache; older ones are deleted after each run "
        "(every version stays in MLflow, and a champion is downloaded again when its cache entry is gone). Never deleted: "
        "the files of versions with an alias, of the run that just finished, and any changed within `batch_lease_seconds` "
        "(another run may be using them).",
    )
    ledger_url: str | None = Field(
        default=None,
        description="The ledger's database: SQLite beside the data by default, any SQLAlchemy URL (PostgreSQL) at scale. "
        "A password in it is masked wherever settings are serialized.",
    )
    ledger_url_secret_block: str | None = Field(
        default=None,
        description="The name of a Prefect Secret block holding the ledger URL, read when a run starts and `ledger_url` is unset.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("FRESHREC_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="The MLflow tracking store: a local SQLite store by default, a tracking server at scale. The standard "
        "`MLFLOW_TRACKING_URI` variable sets it too; a password in it is masked wherever settings are serialized.",
    )
    mlflow_tracking_uri_secret_block: str | None = Field(
        default=None,
        description="The name of a Prefect Secret block holding the tracking URI (a database URL with its password), read when "
        "a run starts and `mlflow_tracking_uri` is unset. MLflow reads a tracking server's credentials from "
        "`MLFLOW_TRACKING_USERNAME` / `_PASSWORD` / `_TOKEN`.",
    )
    mlflow_tracking_password_secret_block: str | None = Field(
        default=None,
        description="The name of a Prefect Secret block holding the tracking server's password for `MLFLOW_TRACKING_USERNAME`, "
        "exported to `MLFLOW_TRACKING_PASSWORD` in the run's process when that is not set.",
    )
    mlflow_artifacts_dir: Path | None = Field(
        default=None,
        description="Artifact root for the experiments freshrec creates; ignored when a tracking server owns artifacts.",
    )
    experiment_name: str = Field(
        default="freshrec",
        description="The MLflow experiment runs are logged to, as users meet it in the MLflow UI.",
    )
    registered_model_name: str = Field(
        default="ecommerce-recommender",
        description="The registered model's name in the MLflow registry, as in `models:/<name>@<alias>` URIs.",
    )
    champion_alias: str = Field(
        default="champion",
        description="The registry alias serving reads the model behind; only a promotion or a rollback moves it.",
    )

    # --- landing and validation -------------------------------------------------------------
    landing_settle_seconds: float = Field(
        default=30.0, ge=0,
        description="A landing file is taken once it has not changed (mtime and ctime) for this many seconds, so a file still "
        "being copied in is never read half-written. 0 takes every file at once (fine when producers write elsewhere and "
        "rename into `landing/`, as the `python -m flows` commands do).",
    )
    landing_encoding: str = Field(
        default="utf-8",
        description="The text encoding of CSV landing files. A byte that is not valid in it is shown as U+FFFD and its row "
        "quarantined as an error; a file is never re-read in another encoding.",
    )
    duplicate_window_days: int = Field(
        default=35, ge=0,
        description="A row that lands again in a later file (overlapping exports) is quarantined as "
        "`duplicate_of_earlier_batch` when the batch that accepted it has its newest event within this many days of the "
        "newest event recorded; a 64-bit fingerprint per accepted row is kept beside each accepted file and only the "
        "window's are read. 0 turns the check off.",
    )
    max_bad_row_share: float = Field(
        default=0.2, ge=0, le=1,
        description="A batch in which more than this share of the rows have errors is rejected whole: the producer is broken, "
        "not the rows.",
    )
    earliest_event_time: str = Field(
        default="1990-01-01",
        description="Events dated before this come from a misconfigured clock or a wrong file and are quarantined. 1990 "
        "predates every web shop's history and still refuses a zero Unix time (1970-01-01), the commonest clock fault.",
    )
    max_quantity: int = Field(
        default=10_000, ge=1,
        description="A line with more units than this is an outlier and is kept out of training (Online Retail's two largest "
        "lines, 80,995 and 74,215 units, were cancelled minutes later).",
    )
    max_unit_price: float = Field(
        default=100_000.0, gt=0,
        description="A unit price above this (or infinite) is a typo or a fee line, not a product price, and its row is "
        "quarantined as an error.",
    )
    non_product_item_pattern: str = Field(
        default=r"^(?:POST|DOT|M|m|C2|D|S|B|BANK CHARGES|AMAZONFEE|CRUK|gift_0001_\d+)$",
        description="A regular expression matching item ids that are not products (postage, bank charges, manual lines, gift "
        "vouchers); their rows are kept out of training. The default names Online Retail's: set your own source's.",
    )
    validation_partitions: int = Field(
        default=1, ge=1,
        description="For large batches: check an interactions file's rows in this many partitions (by order) on a Dask "
        "cluster, with the same outcome as in one piece (docs/scaling.md). 1 checks them in the flow's process.",
    )
    validation_chunk_rows: int = Field(
        default=1_000_000, ge=1_000,
        description="An interactions file with more records than this is validated in pieces of about this many rows (by "
        "order, the same outcome as in one piece), streamed from disk through spill files in the home, so its memory stays "
        "bounded (docs/scaling.md). Smaller files are read whole.",
    )
    dask_address: str | None = Field(
        default=None,
        description="The Dask scheduler the validation partitions go to (`tcp://host:8786`). Unset, a local cluster of "
        "`validation_partitions` worker processes is started for the validation and closed after.",
    )

    # --- drift and the update decision ----------------------------------------------------------
    drift_share_threshold: float = Field(
        default=0.1, ge=0, le=1,
        description="Update when at least this share of the monitored columns drifted; Evidently flags a column when its "
        "distance to the reference (Wasserstein / Jensen-Shannon) passes 0.1. The default makes one drifted column enough: "
        "over 20 seeds no same-distribution synthetic week flagged a column, while each injected shift flagged at least one "
        "(docs/drift-thresholds.md).",
    )
    decay_threshold: float = Field(
        default=0.2, ge=0, le=1,
        description="Update when the champion's Recall@K on a new batch falls this far (relative) below what it scored on its "
        "own holdout when it was trained.",
    )
    max_champion_age_days: float = Field(
        default=60.0, gt=0,
        description="A champion older than this (days of data past its training watermark) is retrained even on quiet data, "
        "so a skipped month never becomes a skipped quarter.",
    )
    volume_threshold_rows: int = Field(
        default=25_000, ge=1,
        description="Update when this many rows were accepted since the champion was trained, even without drift: fresh data "
        "is then worth a fine-tune. The default is about two and a half weeks of the demo shop's traffic.",
    )
    min_new_rows: int = Field(
        default=1_000, ge=1,
        description="Fewer new rows than this never start a fine-tune: they cannot support one and an honest evaluation.",
    )
    reference_sample_rows: int = Field(
        default=20_000, ge=100, le=10_000_000,
        description="Rows kept with each champion as the drift reference; bounded so drift costs O(batch).",
    )
    drift_sample_rows: int = Field(
        default=200_000, ge=1_000, le=100_000_000,
        description="A larger batch's drift is measured on whole orders of at most this many of its rows, so its cost stops "
        "growing with the batch (Evidently's distances, not p-values: a sample estimates the same figure).",
    )
    decay_sample_users: int = Field(
        default=10_000, ge=100, le=100_000_000,
        description="A larger batch's decay is measured on at most this many of its users the champion knows, the same ones "
        "for the same batch (a fixed hash of the user id), so its cost stops growing with the batch.",
    )

    # --- one batch's update -------------------------------------------------------------------
    batch_lease_seconds: float = Field(
        default=1800.0, gt=0,
        description="A run holds its claim on a batch's update for this long and renews it after every training epoch. A "
        "claim not renewed in time (its run was killed) lapses, and a later run resumes the batch from the last finished epoch.",
    )
    max_batch_attempts: int = Field(
        default=3, ge=1,
        description="A batch whose update failed (or whose run died) is tried this many times in all, then parked with its "
        "reason; `python -m flows ledger --retry ID` re-opens it.",
    )

    # --- training -----------------------------------------------------------------------------
    init_from: Literal["champion", "scratch", "checkpoint"] = Field(
        default="champion",
        description="Where an update's weights start: `champion` warm-starts from the production model (cheaper, and it keeps "
        "what it knew), `scratch` retrains on all history every time (what the backtest compares with), `checkpoint` starts "
        "from the file at `init_checkpoint_path`. Without a champion, `champion` trains from scratch: that is the bootstrap.",
    )
    init_checkpoint_path: Path | None = Field(
        default=None,
        description="The model file `init_from=checkpoint` starts from (a model trained elsewhere); it must be inside the "
        "freshrec home, links resolved.",
    )
    use_title_text: bool = Field(
        default=True,
        description="Put item titles, as MiniLM sentence vectors, in the item tower, so a new item is placed by what it is "
        "before anyone buys it. Off, the tower uses id, category and price alone.",
    )
    embedding_dim: int = Field(
        default=32, ge=2, le=1024,
        description="Embedding width. The default suits about 10k items on a CPU; raise it with the catalog.",
    )
    history_length: int = Field(
        default=20, ge=1, le=1000,
        description="Items of a user's history (most recent first) pooled into the user vector.",
    )
    batch_size: int = Field(
        default=1024, ge=2, le=65_536,
        description="Training batch size, also the number of in-batch negatives: large enough for a useful softmax, small "
        "enough for a CPU.",
    )
    scratch_epochs: int = Field(
        default=10, ge=1, le=1000,
        description="Passes over the data when training from scratch. Ten train the demo shop in seconds on a CPU with the "
        "loss still falling; larger catalogs want more.",
    )
    scratch_learning_rate: float = Field(
        default=0.01, gt=0, le=10,
        description="Adam learning rate when training from scratch; 0.01 suits small embedding tables.",
    )
    finetune_epochs: int = Field(
        default=2, ge=1, le=1000,
        description="Passes over the new rows plus the replay sample in a fine-tune. The default, with `replay_ratio` 1.0, is "
        "chosen on the Online Retail backtest: 98.6% of monthly retraining's Recall@20 for 9.6% of its training time "
        "(docs/finetuning.md).",
    )
    finetune_learning_rate: float = Field(
        default=0.01, gt=0, le=10,
        description="Adam learning rate of a fine-tune (by default the scratch rate).",
    )
    finetune_max_steps: int | None = Field(
        default=None, ge=1,
        description="Most optimizer steps a fine-tune may take; unset, `finetune_epochs` alone decide.",
    )
    early_stopping_patience: int = Field(
        default=4, ge=1, le=1000,
        description="Training scores the model on the newest held-out slice after every epoch and keeps the best epoch (the "
        "champion's own weights count as epoch 0); it stops after this many epochs without a better score. The default "
        "never cuts a fine-tune short, as the slice is noisy (docs/finetuning.md).",
    )
    replay_ratio: float = Field(
        default=1.0, ge=0, le=100,
        description="Replayed history rows per new row in a fine-tune, so it does not forget older tastes; raise it where old "
        "tastes must be kept. The default, with 2 `finetune_epochs`, is chosen on the Online Retail backtest "
        "(docs/finetuning.md).",
    )
    replay_half_life_days: float | None = Field(
        default=30.0, gt=0,
        description="Replay draws recent history more often: a row this many days older is half as likely; unset draws "
        "uniformly. On Online Retail 30 days beat 90 days and uniform draws (docs/finetuning.md).",
    )
    replay_reservoir_rows: int = Field(
        default=2_000_000, ge=1, le=100_000_000,
        description="Replay and the forgetting slice are drawn from a bounded sample of the consumed history kept as data "
        "(tasks/history.py), so an update never reads history back. Keep it above `replay_ratio` times the largest batch "
        "plus `forgetting_slice_rows`, or replay is shorter than asked (the update logs it).",
    )
    repeat_memory: int = Field(
        default=100, ge=0, le=10_000,
        description="Items per user the basket memory keeps (models/two_tower.py: each user's items with time-decayed shares "
        "of their baskets, added to the towers' scores with a weight chosen on the held-out slice); 0 turns the memory off, "
        "and a warm start keeps its champion's. The memory's defaults are tuned on December 2011 only, never on a backtest "
        "month (benchmarks/tune_on_december.py, docs/finetuning.md).",
    )
    basket_decay: float = Field(
        default=0.8, gt=0, le=1,
        description="A basket counts `basket_decay ** n` in the memory, n being the user's newer baskets; a warm start keeps "
        "its champion's. Tuned on December 2011 (docs/finetuning.md).",
    )
    memory_neighbours: int = Field(
        default=100, ge=0, le=10_000,
        description="Users most like a user whose memories lend that user theirs (0: none).",
    )
    neighbour_share: float = Field(
        default=1.0, ge=0, le=100,
        description="Weight of the neighbours' mean memory share against the user's own.",
    )
    popularity_share: float = Field(
        default=0.1, ge=0, le=100,
        description="Weight of recent popularity (the most bought item = 1) against the user's own memory share.",
    )
    popularity_half_life_days: float = Field(
        default=30.0, gt=0, le=10_000,
        description="Half-life in days of a purchase in the recent popularity; a warm start keeps its champion's.",
    )
    view_weight: float = Field(
        default=0.1, ge=0, le=100,
        description="What a view counts for in training (the loss, the basket memory and recent popularity), a purchase "
        "counting `purchase_weight`; 0 leaves views out of training while their rows stay accepted. The funnel shop's "
        "backtest of these weights is in docs/event-streams.md; a source without event types sends purchases only.",
    )
    click_weight: float = Field(
        default=0.2, ge=0, le=100,
        description="What a click counts for in training; 0 leaves clicks out of training while their rows stay accepted.",
    )
    add_to_cart_weight: float = Field(
        default=0.5, ge=0, le=100,
        description="What an add-to-cart counts for in training; 0 leaves carts out of training while their rows stay accepted.",
    )
    purchase_weight: float = Field(
        default=1.0, ge=0, le=100,
        description="What a purchase counts for in training; 0 leaves purchases out of training while their rows stay "
        "accepted. The `target_event`'s weight must be above 0.",
    )
    temperature: float = Field(
        default=0.1, gt=0, le=100,
        description="Softmax temperature of the in-batch loss over cosine scores; 0.1 spreads [-1, 1] enough to learn.",
    )
    device: str = Field(
        default="auto",
        description="`auto` trains on CUDA when present; `cpu` or `cuda` force one.",
    )
    train_processes: int = Field(
        default=1, ge=1,
        description="Data-parallel training: 1 trains in the task's process; N launches `torchrun` with N processes from the "
        "training task (one per GPU with NCCL, gloo on CPUs), for the same model (models/distributed.py, docs/scaling.md).",
    )
    seed: int = Field(
        default=0, ge=0, lt=2**32,
        description="Seed of initialisation, shuffling and samples, so a run can be repeated.",
    )

    # --- evaluation and promotion -------------------------------------------------------------
    target_event: Literal["view", "click", "add_to_cart", "purchase"] = Field(
        default="purchase",
        description="The event every metric scores: a user's relevant items in a slice are those they had this event with "
        "(purchase: what they bought). Decay, the gate and the backtest all use it; its weight must be above 0.",
    )
    recommend_consumed: bool = Field(
        default=True,
        description="Whether an item a user already had the target event with may be recommended to them again: yes where "
        "buying again is the norm (groceries, a wholesaler's stock lines), no for one-off goods or media. Served and "
        "evaluated alike.",
    )
    eval_k: int = Field(
        default=20, ge=1, le=1000,
        description="Cut-off of the ranked lists every metric is computed at.",
    )
    eval_max_users: int = Field(
        default=10_000, ge=100, le=100_000_000,
        description="Users a slice is scored on at most, in every evaluation (early stopping, the memory weight, the gate's "
        "slices), the same ones for challenger and champion (a fixed hash of the id): scoring a user ranks the whole catalog "
        "and seeks their neighbours. 10,000 users put the standard error of a mean Recall@K under 0.005.",
    )
    holdout_fraction: float = Field(
        default=0.2, gt=0, lt=1,
        description="Newest share of the new data held out (by time) to compare challenger and champion.",
    )
    primary_metric: Literal["recall", "ndcg", "hit_rate", "mrr"] = Field(
        default="recall",
        description="The metric the promotion gate decides on. Recall@K asks \"did the list contain what they bought\", which "
        "is what a retrieval stage is for; NDCG, hit rate and MRR are logged beside it.",
    )
    min_primary_metric: float = Field(
        default=0.02, ge=0, le=1,
        description="A challenger below this on the newest slice is never promoted, whatever the champion scored. The default "
        "stops a broken model, not a weak one: a random ranker's Recall@20 is about 20 / n_items (0.0005 on Online Retail's "
        "4k items, 0.13 on the demo shop's 150).",
    )
    min_improvement: float = Field(
        default=0.0, ge=-1, le=1,
        description="The challenger's absolute gain over the champion on the newest slice must be more than this (and "
        "`min_relative_improvement` must hold too). At 0 any real gain promotes, since the challenger has seen newer data "
        "and items, but a tie does not; raise it when a promotion costs something (a cache warm-up, a review).",
    )
    min_relative_improvement: float = Field(
        default=0.0, ge=-1,
        description="The challenger's gain relative to the champion on the newest slice must be more than this (and "
        "`min_improvement` must hold too). At 0 any real gain promotes.",
    )
    max_forgetting: float = Field(
        default=0.10, ge=0, le=1,
        description="The most a challenger warm-started from the champion may lose against it on the historical slice (recent "
        "earlier data the update did not replay), in absolute primary metric, scored with the towers alone since the basket "
        "memory weighs older baskets less by design. The default lets the demo's measured healthy updates through and stops "
        "larger losses.",
    )
    forgetting_slice_rows: int = Field(
        default=20_000, ge=0, le=10_000_000,
        description="Rows of earlier accepted data, not replayed by the update, scored for forgetting.",
    )
    bootstrap_resamples: int = Field(
        default=1000, ge=0, le=100_000,
        description="Bootstrap resamples (of users) of the primary metric's intervals, reported for the challenger, the "
        "champion and their paired difference.",
    )
    confidence_level: float = Field(
        default=0.95, gt=0, lt=1,
        description="Confidence level of those bootstrap intervals.",
    )
    require_significant_gain: bool = Field(
        default=False,
        description="Promote only when the lower end of the paired difference's interval is above 0. Off by default: a small "
        "shop's week of holdout is a few hundred users, whose interval spans a few points of Recall and would block most "
        "honest improvements.",
    )

    # --- serving ---------------------------------------------------------------------------
    max_k: int = Field(
        default=100, ge=1, le=10_000,
        description="The registered model refuses, before any scoring, a request for more than this many items per user (a "
        "clear 400 answer, not a server busy for minutes). Travels with each registered version.",
    )
    max_request_rows: int = Field(
        default=1_000, ge=1, le=1_000_000,
        description="The registered model refuses, before any scoring, a request with more users than this (a clear 400 "
        "answer). Travels with each registered version.",
    )
    serve_poll_seconds: float = Field(
        default=10.0, gt=0, le=86_400,
        description="How often the recommendation service (`python -m flows serve`) asks the registry which version the "
        "champion alias names, swapping to it when it changed: a promotion or a rollback reaches clients within one period "
        "(plus the new version's load).",
    )
    serve_max_body_bytes: int = Field(
        default=1_048_576, ge=1_024, le=1_073_741_824,
        description="Request bodies larger than this are refused (413) before they are read whole.",
    )
    serve_webhook_secret: SecretStr | None = Field(
        default=None,
        description="With a secret, `POST /webhooks/mlflow` takes an MLflow registry webhook signed with it (an alias event) "
        "and checks the alias at once instead of at the end of the period; unset, the endpoint does not exist. The secret "
        "never leaves the process (docs/serving.md).",
    )

    @field_validator("non_product_item_pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"non_product_item_pattern is not a regular expression: {error}") from None
        return pattern

    @model_validator(mode="after")
    def _target_is_trained(self) -> "Settings":
        if self.event_weights()[self.target_event] <= 0:
            raise ValueError(f"target_event is {self.target_event}, whose weight is 0: a model is never trained on what it is scored on")
        return self

    def event_weights(self) -> dict[str, float]:
        """What each event type counts for in training."""
        return {"view": self.view_weight, "click": self.click_weight, "add_to_cart": self.add_to_cart_weight, "purchase": self.purchase_weight}

    @field_serializer("ledger_url", "mlflow_tracking_uri", when_used="json")
    def _masked(self, url: str | None) -> str | None:
        # JSON is what leaves the process (a flow run's parameters in Prefect's database).
        return redact(url)

    def with_overrides(self, overrides: "RunOverrides | None") -> "Settings":
        """These settings with a deployment run's overrides applied (an empty field keeps the
        worker's value), validated again as a whole."""
        changes = overrides.model_dump(exclude_none=True) if overrides is not None else {}
        return type(self)(**{**self.model_dump(), **changes}) if changes else self

    @model_validator(mode="after")
    def _derive_paths(self) -> "Settings":
        home = self.home
        for name, sub in _HOME_DIRS.items():
            if getattr(self, name) is None:
                setattr(self, name, home / sub)
        if self.ledger_url is None and self.ledger_url_secret_block:
            self.ledger_url = secret_block(self.ledger_url_secret_block)
        if self.ledger_url is None:
            self.ledger_url = f"sqlite:///{(home / _HOME_STORES['ledger_url']).resolve()}"
        if self.init_from == "checkpoint" and self.init_checkpoint_path is None:
            raise ValueError("init_from='checkpoint' needs init_checkpoint_path")
        if self.init_checkpoint_path is not None and not self.init_checkpoint_path.resolve().is_relative_to(home.resolve()):
            # A run may start from a model file of its own home, never from anywhere on the worker.
            raise ValueError(f"init_checkpoint_path must be inside the freshrec home {home} (links resolved)")
        if self.mlflow_tracking_uri is None and self.mlflow_tracking_uri_secret_block:
            self.mlflow_tracking_uri = secret_block(self.mlflow_tracking_uri_secret_block)
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{(home / _HOME_STORES['mlflow_tracking_uri']).resolve()}"
        return self


# What a deployment run may change from the Prefect UI or API: the update decision's thresholds,
# the training knobs and the promotion gate, each bounded by its field. Everything else (paths,
# stores and credentials, the landing and data contract, the Dask scheduler, processes and
# device, names and aliases, serving limits) is the worker's environment only.
RUN_OVERRIDABLE: tuple[str, ...] = (
    "drift_share_threshold",
    "decay_threshold",
    "max_champion_age_days",
    "volume_threshold_rows",
    "min_new_rows",
    "init_from",
    "init_checkpoint_path",
    "use_title_text",
    "embedding_dim",
    "history_length",
    "batch_size",
    "scratch_epochs",
    "scratch_learning_rate",
    "finetune_epochs",
    "finetune_learning_rate",
    "finetune_max_steps",
    "early_stopping_patience",
    "replay_ratio",
    "replay_half_life_days",
    "repeat_memory",
    "basket_decay",
    "memory_neighbours",
    "neighbour_share",
    "popularity_share",
    "popularity_half_life_days",
    "view_weight",
    "click_weight",
    "add_to_cart_weight",
    "purchase_weight",
    "temperature",
    "seed",
    "eval_k",
    "holdout_fraction",
    "primary_metric",
    "min_primary_metric",
    "min_improvement",
    "min_relative_improvement",
    "max_forgetting",
    "forgetting_slice_rows",
    "bootstrap_resamples",
    "confidence_level",
    "require_significant_gain",
)


def _overridable_field(name: str):
    field = Settings.model_fields[name]
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    # The form the Prefect UI shows says exactly what the setting's own description says.
    return (Optional[annotation], Field(default=None, description=field.description))


# Every field empty by default: the worker's value. Unknown fields are refused (extra="forbid"),
# so a run's parameters cannot name a path, a store or the Dask scheduler.
RunOverrides: type[BaseModel] = create_model(
    "RunOverrides",
    __config__=ConfigDict(extra="forbid", hide_input_in_errors=True),
    __doc__="Settings a deployment run may change; empty fields keep the worker's values.",
    **{name: _overridable_field(name) for name in RUN_OVERRIDABLE},
)


# --- the settings reference (docs/settings.md) ------------------------------------------------------

_SECTION_LINE = re.compile(r"^    # --- (?P<title>.+?) -+\s*$")
_FIELD_LINE = re.compile(r"^    (?P<name>[A-Za-z_]\w*)\s*:")
_BOUNDS = ((annotated_types.Ge, "ge", "≥"), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "≤"), (annotated_types.Lt, "lt", "<"))
_TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool", Path: "path", SecretStr: "secret"}


def settings_sections() -> list[tuple[str, list[str]]]:
    """The ``# --- section ---`` groups of ``Settings``, in source order, each with its fields' names in order."""
    sections: list[tuple[str, list[str]]] = []
    for line in inspect.getsource(Settings).splitlines():
        if match := _SECTION_LINE.match(line):
            sections.append((match["title"], []))
        elif (match := _FIELD_LINE.match(line)) and match["name"] in Settings.model_fields:
            if not sections:
                raise ValueError(f"Settings.{match['name']} comes before the first `# --- section ---` comment")
            sections[-1][1].append(match["name"])
    return sections


def _type_text(annotation) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in get_args(annotation))
    if get_origin(annotation) is Union or type(annotation).__name__ == "UnionType":
        kinds = [kind for kind in get_args(annotation) if kind is not type(None)]
        text = " or ".join(_type_text(kind) for kind in kinds)
        return f"{text}, optional" if len(kinds) < len(get_args(annotation)) else text
    return _TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default_text(name: str) -> str:
    if name in _HOME_DIRS:
        return f"`<home>/{_HOME_DIRS[name]}`"
    if name in _HOME_STORES:
        return f"SQLite `<home>/{_HOME_STORES[name]}`"
    default = Settings.model_fields[name].default
    if default is None or isinstance(default, SecretStr):
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{default}`"


def _bounds_text(name: str) -> str:
    metadata = Settings.model_fields[name].metadata
    return ", ".join(f"{sign} {getattr(item, attr)}" for kind, attr, sign in _BOUNDS for item in metadata if isinstance(item, kind))


def _environment_text(name: str) -> str:
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        names = [choice for choice in alias.choices if isinstance(choice, str)]
    elif isinstance(alias, str):
        names = [alias]
    else:
        names = [f"{Settings.model_config['env_prefix']}{name}".upper()]
    return " or ".join(f"`{variable}`" for variable in names)


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell: a ``|`` escaped, so it does not end the cell."""
    return " ".join(text.split()).replace("|", r"\|")


def settings_reference() -> str:
    """The Markdown settings reference (docs/settings.md), generated from the fields of ``Settings``:
    one table per section of the class, with each field's environment variable, type, default,
    bounds, whether a deployment run may override it, and its description."""
    secret_blocks = ", ".join(f"`{name}`" for name in Settings.model_fields if name.endswith("_secret_block"))
    lines = [
        "# Settings reference",
        "",
        "Every path, URI and threshold freshrec uses is a field of `Settings` in `models/settings.py`, read from the",
        "worker's environment: `FRESHREC_<NAME>` sets the field `<name>` (`FRESHREC_HOME` moves all state), and the",
        "standard `MLFLOW_TRACKING_URI` is honoured. The store URLs and the MLflow server's password may come from",
        f"Prefect Secret blocks instead ({secret_blocks}),",
        "read when a run starts; a password in a store URL is masked wherever settings are serialized. A deployment run",
        f"may override only the settings marked run-overridable ({len(RUN_OVERRIDABLE)} of {len(Settings.model_fields)}, each within its bounds: `RunOverrides`,",
        "the form the Prefect UI shows); everything else is the worker's (docs/security.md).",
        "",
        "This page is generated from the fields' descriptions: `freshrec settings-reference > docs/settings.md`",
        "(or `python -m flows settings-reference > docs/settings.md`) writes it again, and a test fails when it is stale.",
    ]
    header = ("Setting", "Environment variable", "Type", "Default", "Bounds", "Run-overridable", "Description")
    for title, names in settings_sections():
        lines += ["", f"## {title[:1].upper()}{title[1:]}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in names:
            field = Settings.model_fields[name]
            row = (
                f"`{name}`", _environment_text(name), _type_text(field.annotation), _default_text(name), _bounds_text(name),
                "yes" if name in RUN_OVERRIDABLE else "no", field.description or "",
            )
            lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
    return "\n".join(lines) + "\n"
