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

import re
from pathlib import Path
from typing import Annotated, Literal, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit

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


class Settings(BaseSettings):
    # hide_input_in_errors: a rejected value (a malformed URL with its password) is never echoed.
    model_config = SettingsConfigDict(env_prefix="FRESHREC_", extra="forbid", hide_input_in_errors=True)

    # --- where state lives ---------------------------------------------------------------
    # One directory holds a default run's state, so a demo is one `rm -r` away from clean.
    home: Path = Path(".freshrec")
    # Where batch files arrive (read-only to freshrec: raw data stays as it came).
    landing_dir: Path | None = None
    # Validated rows, one Parquet file per batch: what training reads.
    accepted_dir: Path | None = None
    # Bad rows and rejected batches, with the reason: nothing is dropped silently.
    quarantine_dir: Path | None = None
    # Drift reports (HTML), also logged to MLflow.
    reports_dir: Path | None = None
    # Challenger checkpoints, kept so a run can be inspected or resumed.
    checkpoints_dir: Path | None = None
    # Model files kept per kind in checkpoints/ and the champion cache; older ones are deleted
    # after each run (every version stays in MLflow, and a champion is downloaded again when its
    # cache entry is gone). Never deleted: the files of versions with an alias, of the run that
    # just finished, and any changed within batch_lease_seconds (another run may be using them).
    keep_model_files: int = Field(default=3, ge=1, le=1000)
    # SQLite beside the data by default; any SQLAlchemy URL (PostgreSQL) at scale. Or the name of
    # a Prefect Secret block holding the URL (ledger_url_secret_block), read when a run starts.
    ledger_url: str | None = None
    ledger_url_secret_block: str | None = None
    # Local SQLite store by default; a tracking server at scale. MLFLOW_TRACKING_URI wins.
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("FRESHREC_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
    )
    # A Prefect Secret block holding the tracking URI (a database URL with its password). MLflow
    # reads a tracking server's credentials from MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN.
    mlflow_tracking_uri_secret_block: str | None = None
    # A Prefect Secret block holding the tracking server's password for MLFLOW_TRACKING_USERNAME
    # (exported to MLFLOW_TRACKING_PASSWORD in the run's process when that is not set).
    mlflow_tracking_password_secret_block: str | None = None
    # Artifact root for experiments freshrec creates; ignored when a server owns artifacts.
    mlflow_artifacts_dir: Path | None = None
    # Names users meet in the MLflow UI and in `models:/<name>@<alias>` URIs.
    experiment_name: str = "freshrec"
    registered_model_name: str = "ecommerce-recommender"
    # Serving reads the model behind this alias; only a promotion moves it.
    champion_alias: str = "champion"

    # --- landing and validation -------------------------------------------------------------
    # A landing file is taken once it has not changed (mtime and ctime) for this many seconds, so
    # a file still being copied in is never read half-written. 0 takes every file at once (fine
    # when producers write elsewhere and rename into landing/, as `python -m flows` commands do).
    landing_settle_seconds: float = Field(default=30.0, ge=0)
    # The text encoding of CSV landing files. A byte that is not valid in it is shown as U+FFFD
    # and the row quarantined as an error (one bad byte never re-reads a whole file another way).
    landing_encoding: str = "utf-8"
    # A row that lands again in a later file (overlapping exports) is quarantined as
    # `duplicate_of_earlier_batch` when the batch that accepted it has its newest event within
    # this many days of the newest event recorded (a 64-bit fingerprint per accepted row is kept
    # beside each accepted file; only the window's are read). 0 turns the check off.
    duplicate_window_days: int = Field(default=35, ge=0)
    # More bad rows than this share means the producer is broken, not the rows: reject the batch.
    max_bad_row_share: float = Field(default=0.2, ge=0, le=1)
    # Events dated before this are from a misconfigured clock or a wrong file. 1990 predates
    # every web shop's history and still refuses a zero Unix time (1970-01-01), the commonest
    # clock fault.
    earliest_event_time: str = "1990-01-01"
    # One line above this many units is an outlier (Online Retail's two largest, 80,995 and
    # 74,215, were cancelled minutes later); such lines are kept out of training.
    max_quantity: int = Field(default=10_000, ge=1)
    # A unit price above this is a typo or a fee line, not a product price (catches infinity too).
    max_unit_price: float = Field(default=100_000.0, gt=0)
    # Item ids that are not products (postage, bank charges, manual lines, gift vouchers). The
    # default names Online Retail's; set your own source's.
    non_product_item_pattern: str = r"^(?:POST|DOT|M|m|C2|D|S|B|BANK CHARGES|AMAZONFEE|CRUK|gift_0001_\d+)$"
    # Large batches: check an interactions file's rows in this many partitions (by order) on a
    # Dask cluster, the same split as in one piece (docs/scaling.md). 1: in the flow's process.
    validation_partitions: int = Field(default=1, ge=1)
    # An interactions file with more records than this is validated in pieces of about this many
    # rows (by order, the same split as in one piece), streamed from disk through spill files in
    # the home, so its memory stays bounded (docs/scaling.md); smaller files are read whole.
    validation_chunk_rows: int = Field(default=1_000_000, ge=1_000)
    # The Dask scheduler the partitions go to (tcp://host:8786); empty: a local cluster of
    # `validation_partitions` worker processes, started for the validation and closed after.
    dask_address: str | None = None

    # --- drift and the update decision ----------------------------------------------------------
    # Evidently flags a column when its distance to the reference passes 0.1 (Wasserstein /
    # Jensen-Shannon); update when at least this share of the 9 monitored columns drifted. One
    # column is enough: over 20 seeds no same-distribution synthetic week flagged any column,
    # while each injected shift flagged at least one (docs/drift-thresholds.md).
    drift_share_threshold: float = Field(default=0.1, ge=0, le=1)
    # Update when the champion's Recall@K on a new batch falls this far (relative) below what it
    # scored on its own holdout when it was trained.
    decay_threshold: float = Field(default=0.2, ge=0, le=1)
    # A champion older than this (days of data past its training watermark) is retrained even on
    # quiet data, so a skipped month never becomes a skipped quarter.
    max_champion_age_days: float = Field(default=60.0, gt=0)
    # Rows accepted since the champion was trained; past this, fresh data is worth a fine-tune
    # even without drift (about two and a half weeks of the demo shop's traffic).
    volume_threshold_rows: int = Field(default=25_000, ge=1)
    # Fewer new rows than this cannot support a fine-tune and an honest evaluation.
    min_new_rows: int = Field(default=1_000, ge=1)
    # Rows kept with each champion as the drift reference; bounded so drift costs O(batch).
    reference_sample_rows: int = Field(default=20_000, ge=100, le=10_000_000)
    # A large batch's drift and decay are measured on a bounded part of it, so their cost stops
    # growing with the batch: whole orders of at most drift_sample_rows rows (Evidently's
    # distances, not p-values, so a sample estimates the same figure), and at most
    # decay_sample_users of the batch's users (a fixed hash of the user id picks them).
    drift_sample_rows: int = Field(default=200_000, ge=1_000, le=100_000_000)
    decay_sample_users: int = Field(default=10_000, ge=100, le=100_000_000)

    # --- one batch's update -------------------------------------------------------------------
    # A run holds its claim on a batch's update for this long and renews it after every training
    # epoch; a claim not renewed in time (its run was killed) lapses and a later run resumes the
    # batch, from the last finished epoch.
    batch_lease_seconds: float = Field(default=1800.0, gt=0)
    # A batch whose update failed (or whose run died) is tried again by later runs this many
    # times in all, then parked with its reason (`python -m flows ledger --retry ID` re-opens it).
    max_batch_attempts: int = Field(default=3, ge=1)

    # --- training -----------------------------------------------------------------------------
    # Where an update's weights start: "champion" warm-starts from the production model (the
    # point of freshrec: cheaper, and it keeps what it knew); "scratch" retrains on all history
    # every time (the reference the backtest compares with); "checkpoint" starts from the file
    # at init_checkpoint_path (a model trained elsewhere). Without a champion, "champion" trains
    # from scratch: that is the bootstrap.
    init_from: Literal["champion", "scratch", "checkpoint"] = "champion"
    init_checkpoint_path: Path | None = None
    # Item titles become MiniLM sentence vectors in the item tower, so a new item is placed by
    # what it is before anyone buys it. Off, the tower uses id, category and price alone.
    use_title_text: bool = True
    # Embedding width: enough for ~10k items on a CPU; raise with the catalog.
    embedding_dim: int = Field(default=32, ge=2, le=1024)
    # Items of a user's history pooled into the user vector (most recent first).
    history_length: int = Field(default=20, ge=1, le=1000)
    # Also the number of in-batch negatives: large enough for a useful softmax, small enough for a CPU.
    batch_size: int = Field(default=1024, ge=2, le=65_536)
    # Scratch training: ten passes train the demo shop in seconds on a CPU (the loss is still
    # falling; larger catalogs want more); Adam at 0.01 suits small embedding tables.
    scratch_epochs: int = Field(default=10, ge=1, le=1000)
    scratch_learning_rate: float = Field(default=0.01, gt=0, le=10)
    # A fine-tune: two passes over the new rows plus the replay sample, at the scratch rate.
    # Measured through the whole pipeline on Online Retail (make backtest, with the repeat
    # memory): 2 passes with replay 1.0 reached 98.6% of monthly retraining's Recall@20 for 9.6%
    # of its training time; 4 passes with replay 3.0 reached 96.7% for 30.8%. (Before the repeat
    # memory, a lighter study preferred 4 passes: docs/finetuning.md.)
    finetune_epochs: int = Field(default=2, ge=1, le=1000)
    finetune_learning_rate: float = Field(default=0.01, gt=0, le=10)
    # Optimizer steps a fine-tune may take at most (None: finetune_epochs decide).
    finetune_max_steps: int | None = Field(default=None, ge=1)
    # Training scores the model on the newest held-out slice after every epoch and keeps the
    # best epoch (the champion's own weights count as epoch 0); it stops after this many epochs
    # without a better score. At 4 it never cuts a fine-tune short: stopping after
    # one bad epoch lost 0.5 points of Recall@20 on Online Retail (the slice is noisy).
    early_stopping_patience: int = Field(default=4, ge=1, le=1000)
    # Replayed history rows per new row, so a fine-tune does not forget older tastes. Online
    # Retail backtest: 1.0 (with 2 passes) beat 3.0 (with 4) on quality and cost, see above.
    # Synthetic shop after a drifted week: at 1.0 the model lost 0.07 Recall@20 on weeks like
    # the old ones, at 3.0 it lost 0.02: raise it where old tastes must be kept.
    replay_ratio: float = Field(default=1.0, ge=0, le=100)
    # Replay draws recent history more often: a row this many days older is half as likely.
    # On Online Retail 30 days beat 90 days and uniform draws (94.5% vs 93.7% and 92.9% of
    # scratch). None draws uniformly.
    replay_half_life_days: float | None = Field(default=30.0, gt=0)
    # Replay and the forgetting slice are drawn from a bounded sample of the consumed history
    # kept as data (tasks/history.py), so an update never reads history back. Keep it above
    # replay_ratio times the largest batch plus forgetting_slice_rows, or replay is shorter than
    # asked (the update logs it).
    replay_reservoir_rows: int = Field(default=2_000_000, ge=1, le=100_000_000)
    # Basket memory (models/two_tower.py): each user's items with time-decayed shares of their
    # baskets, folded in exactly at every update, plus the shares of the users most like them
    # and recent popularity; a weight chosen on the held-out slice after training adds it to the
    # towers' scores. The defaults were tuned on December 2011 only, never on a backtest month
    # (benchmarks/tune_on_december.py): docs/finetuning.md. repeat_memory is the items kept per
    # user (100 kept what all items give; 0 turns the memory off). repeat_memory, basket_decay
    # and popularity_half_life_days say how a memory is built: a warm start keeps its champion's
    # (a bootstrap or a retrain from scratch takes new ones); the neighbours and shares apply to
    # every new model.
    repeat_memory: int = Field(default=100, ge=0, le=10_000)
    # A basket counts basket_decay ** (the user's newer baskets): 0.8 beat 0.7, 0.9 and 0.95.
    basket_decay: float = Field(default=0.8, gt=0, le=1)
    # Users whose memories lend a user theirs (0: none), and the weight of their mean share.
    memory_neighbours: int = Field(default=100, ge=0, le=10_000)
    neighbour_share: float = Field(default=1.0, ge=0, le=100)
    # Weight of recent popularity (the most bought item = 1) and its half-life in days.
    popularity_share: float = Field(default=0.1, ge=0, le=100)
    popularity_half_life_days: float = Field(default=30.0, gt=0, le=10_000)
    # What each event type counts for in training (the loss, the basket memory and recent
    # popularity; a purchase counts purchase_weight). 0 leaves a type out of training; its rows
    # stay accepted. The demo's funnel shop, where views and carts show what a visitor buys
    # next, is backtested both ways in docs/event-streams.md. A source without event types
    # sends purchases only, and these do not matter.
    view_weight: float = Field(default=0.1, ge=0, le=100)
    click_weight: float = Field(default=0.2, ge=0, le=100)
    add_to_cart_weight: float = Field(default=0.5, ge=0, le=100)
    purchase_weight: float = Field(default=1.0, ge=0, le=100)
    # Softmax temperature of the in-batch loss over cosine scores: 0.1 spreads [-1, 1] enough to learn.
    temperature: float = Field(default=0.1, gt=0, le=100)
    # "auto" takes CUDA when present; "cpu" or "cuda" force it.
    device: str = "auto"
    # Data-parallel training: 1 trains in the task's process; N launches `torchrun` with N
    # processes (one per GPU, NCCL; gloo on CPUs) from the training task. Same model, see
    # models/distributed.py and docs/scaling.md.
    train_processes: int = Field(default=1, ge=1)
    # Fixes initialisation, shuffling and samples, so a run can be repeated.
    seed: int = Field(default=0, ge=0, lt=2**32)

    # --- evaluation and promotion -------------------------------------------------------------
    # The event every metric scores: a user's relevant items in a slice are those they had this
    # event with (purchase: what they bought). Decay, the gate and the backtest all use it.
    target_event: Literal["view", "click", "add_to_cart", "purchase"] = "purchase"
    # Whether an item a user already had the target event with may be recommended to them
    # again: yes where buying again is the norm (groceries, a wholesaler's stock lines), no for
    # one-off goods or media. Served and evaluated alike.
    recommend_consumed: bool = True
    # Cut-off of the ranked lists every metric is computed at.
    eval_k: int = Field(default=20, ge=1, le=1000)
    # Users a slice is scored on at most (every evaluation: early stopping, the memory weight,
    # the gate's slices), the same ones for challenger and champion (a fixed hash of the id).
    # Scoring a user ranks the whole catalog and seeks their neighbours, so a shop of millions
    # would otherwise pay for every held-out user at every epoch. 10,000 users put the standard
    # error of a mean Recall@K under 0.005.
    eval_max_users: int = Field(default=10_000, ge=100, le=100_000_000)
    # Newest share of the new data held out (by time) to compare challenger and champion.
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    # The metric the gate decides on. Recall@K asks "did the list contain what they bought",
    # which is what a retrieval stage is for; NDCG, hit rate and MRR are logged beside it.
    primary_metric: Literal["recall", "ndcg", "hit_rate", "mrr"] = "recall"
    # Value threshold: a challenger below this on the newest slice is never promoted, whatever
    # the champion scored (a random ranker's Recall@20 is about 20 / n_items: 0.0005 on Online
    # Retail's 4k items, 0.13 on the demo shop's 150). 0.02 stops a broken model, not a weak one.
    min_primary_metric: float = Field(default=0.02, ge=0, le=1)
    # Change thresholds on the newest slice, both must hold: the challenger's absolute gain over
    # the champion must be more than min_improvement, and its gain relative to the champion more
    # than min_relative_improvement. At 0 and 0 any real gain promotes: the challenger has seen
    # newer data and items than the champion, so a tie on the metric is not a reason to ship it,
    # but any gain is. Raise them when promotions cost you something (a cache warm-up, a review).
    min_improvement: float = Field(default=0.0, ge=-1, le=1)
    min_relative_improvement: float = Field(default=0.0, ge=-1)
    # Forgetting tolerance: the most a challenger warm-started from the champion may lose
    # against it on the historical slice (recent earlier purchases the update did not replay),
    # in absolute primary metric, scored with the towers alone (the basket memory weighs older
    # baskets less by design: scored with it, the demo's updates "lost" 0.17 to 0.27 and every
    # one was refused). Towers alone, the demo's updates lost -0.010 to 0.093 there while gaining
    # 0.02 to 0.06 on new data; before any memory, updates without replay lost 0.10 to 0.16.
    # 0.10 lets every measured healthy update through and stops losses beyond them.
    max_forgetting: float = Field(default=0.10, ge=0, le=1)
    # Rows of earlier accepted data (not replayed by this update) scored for forgetting.
    forgetting_slice_rows: int = Field(default=20_000, ge=0, le=10_000_000)
    # Bootstrap intervals (users resampled) on the primary metric: reported for the challenger,
    # the champion and their paired difference.
    bootstrap_resamples: int = Field(default=1000, ge=0, le=100_000)
    confidence_level: float = Field(default=0.95, gt=0, lt=1)
    # Promote only when the lower end of the paired difference's interval is above 0. Off by
    # default: a week's holdout of a small shop is a few hundred users, and the interval then
    # spans a few points of Recall, which would block most honest improvements.
    require_significant_gain: bool = False

    # --- serving ---------------------------------------------------------------------------
    # The registered model refuses, before any scoring, a request for more than max_k items per
    # user or with more than max_request_rows users (a clear 400 answer, not a server busy for
    # minutes); both travel with each registered version.
    max_k: int = Field(default=100, ge=1, le=10_000)
    max_request_rows: int = Field(default=1_000, ge=1, le=1_000_000)
    # The recommendation service (python -m flows serve) asks the registry this often which
    # version the champion alias names, and swaps to it when it changed: a promotion or a
    # rollback reaches clients within one period (plus the new version's load).
    serve_poll_seconds: float = Field(default=10.0, gt=0, le=86_400)
    # Request bodies larger than this are refused (413) before they are read whole.
    serve_max_body_bytes: int = Field(default=1_048_576, ge=1_024, le=1_073_741_824)
    # With a secret, POST /webhooks/mlflow takes an MLflow registry webhook signed with it (an
    # alias event) and checks the alias at once instead of at the end of the period. Unset, the
    # endpoint does not exist. The secret never leaves the process (it is masked when settings
    # are serialized).
    serve_webhook_secret: SecretStr | None = None

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
        for name, sub in (
            ("landing_dir", "landing"),
            ("accepted_dir", "accepted"),
            ("quarantine_dir", "quarantine"),
            ("reports_dir", "reports"),
            ("checkpoints_dir", "checkpoints"),
            ("mlflow_artifacts_dir", "mlartifacts"),
        ):
            if getattr(self, name) is None:
                setattr(self, name, home / sub)
        if self.ledger_url is None and self.ledger_url_secret_block:
            self.ledger_url = secret_block(self.ledger_url_secret_block)
        if self.ledger_url is None:
            self.ledger_url = f"sqlite:///{(home / 'ledger.db').resolve()}"
        if self.init_from == "checkpoint" and self.init_checkpoint_path is None:
            raise ValueError("init_from='checkpoint' needs init_checkpoint_path")
        if self.init_checkpoint_path is not None and not self.init_checkpoint_path.resolve().is_relative_to(home.resolve()):
            # A run may start from a model file of its own home, never from anywhere on the worker.
            raise ValueError(f"init_checkpoint_path must be inside the freshrec home {home} (links resolved)")
        if self.mlflow_tracking_uri is None and self.mlflow_tracking_uri_secret_block:
            self.mlflow_tracking_uri = secret_block(self.mlflow_tracking_uri_secret_block)
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"sqlite:///{(home / 'mlflow.db').resolve()}"
        return self


# What a deployment run may change from the Prefect UI or API: the update decision's thresholds,
# the training knobs and the promotion gate, each bounded by its field. Everything else (paths,
# stores and credentials, the landing and data contract, the Dask scheduler, processes and
# device, names and aliases, serving limits) is the worker's environment only.
RUN_OVERRIDABLE = {
    "drift_share_threshold": "Update when at least this share of monitored columns drifted.",
    "decay_threshold": "Update when the champion's metric on new data falls this far (relative) below its holdout score.",
    "max_champion_age_days": "Retrain a champion whose training data is this many days old, even on quiet data.",
    "volume_threshold_rows": "Update when this many rows were accepted since the champion was trained.",
    "min_new_rows": "Fewer new rows than this never start a fine-tune.",
    "init_from": "Where an update starts: champion (warm start), scratch, or checkpoint (init_checkpoint_path).",
    "init_checkpoint_path": "A checkpoint file inside the freshrec home, for init_from=checkpoint.",
    "use_title_text": "Put item titles (MiniLM vectors) in the item tower.",
    "embedding_dim": "Embedding width.",
    "history_length": "Items of a user's history pooled into the user vector.",
    "batch_size": "Training batch size (also the in-batch negatives).",
    "scratch_epochs": "Passes over the data when training from scratch.",
    "scratch_learning_rate": "Adam learning rate when training from scratch.",
    "finetune_epochs": "Passes over new rows and replay in a fine-tune.",
    "finetune_learning_rate": "Adam learning rate of a fine-tune.",
    "finetune_max_steps": "Most optimizer steps of a fine-tune.",
    "early_stopping_patience": "Epochs without a better held-out score before training stops.",
    "replay_ratio": "Replayed history rows per new row in a fine-tune.",
    "replay_half_life_days": "Replay draws a row this many days older half as often.",
    "repeat_memory": "Items per user the basket memory keeps (0: off; a warm start keeps its champion's).",
    "basket_decay": "Weight of a basket in the memory per newer basket of the same user (a warm start keeps its champion's).",
    "memory_neighbours": "Users whose memories lend a user theirs (0: none).",
    "neighbour_share": "Weight of the neighbours' memories against the user's own.",
    "popularity_share": "Weight of recent popularity against the user's own memory.",
    "popularity_half_life_days": "Half-life of a purchase in the recent popularity (a warm start keeps its champion's).",
    "view_weight": "What a view counts for in training (a purchase: purchase_weight; 0 leaves views out).",
    "click_weight": "What a click counts for in training (0 leaves clicks out).",
    "add_to_cart_weight": "What an add-to-cart counts for in training (0 leaves carts out).",
    "purchase_weight": "What a purchase counts for in training.",
    "temperature": "Softmax temperature of the training loss.",
    "seed": "Seed of initialisation, shuffling and samples.",
    "eval_k": "Cut-off of the ranked lists every metric is computed at.",
    "holdout_fraction": "Newest share of the new data held out for the comparison.",
    "primary_metric": "The metric the promotion gate decides on.",
    "min_primary_metric": "A challenger below this on the newest slice is never promoted.",
    "min_improvement": "Absolute gain over the champion a promotion needs (more than this).",
    "min_relative_improvement": "Relative gain over the champion a promotion needs (more than this).",
    "max_forgetting": "Most a warm-started challenger may lose against the champion on older data.",
    "forgetting_slice_rows": "Rows of older data scored for forgetting.",
    "bootstrap_resamples": "Bootstrap resamples of the metric's confidence intervals.",
    "confidence_level": "Confidence level of those intervals.",
    "require_significant_gain": "Promote only when the paired difference's interval is above 0.",
}


def _overridable_field(name: str):
    field = Settings.model_fields[name]
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return (Optional[annotation], Field(default=None, description=RUN_OVERRIDABLE[name]))


# Every field empty by default: the worker's value. Unknown fields are refused (extra="forbid"),
# so a run's parameters cannot name a path, a store or the Dask scheduler.
RunOverrides: type[BaseModel] = create_model(
    "RunOverrides",
    __config__=ConfigDict(extra="forbid", hide_input_in_errors=True),
    __doc__="Settings a deployment run may change; empty fields keep the worker's values.",
    **{name: _overridable_field(name) for name in RUN_OVERRIDABLE},
)
