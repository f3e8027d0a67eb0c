"""A two-tower retrieval model, small enough to read in one sitting.

Item tower: an id embedding plus a projection of the title's sentence embedding (MiniLM), the
category's embedding and a projection of the log price, so an item nobody has bought yet has a
vector placed by what it is. User tower: an id embedding plus the mean of the item vectors in the
user's recent history, so a new user is placed by what they bought. Scores are cosine
similarities; training uses an in-batch softmax with a logQ correction for item popularity.

Repeat memory: each user's most bought items with their purchase counts. At scoring time an item
gains ``repeat_weight * log(1 + purchases by this user)``, a weight calibrated on held-out data
after training (see models.train.calibrate_repeat_weight): on a wholesaler's data, where buying
again is the norm, the towers alone cannot say "this customer buys this every month".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelArgs:
    n_users: int
    n_items: int  # index 0 is padding, real items start at 1
    n_categories: int  # index 0 is "unknown"
    dim: int = 32
    history_length: int = 20
    text_dim: int = 64  # width of the title vectors (models.text.MODEL_TEXT_DIM)
    repeat_slots: int = 50  # items per user in the repeat memory (0: none)


class TwoTower(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.user_embedding = nn.Embedding(args.n_users, args.dim)
        self.item_embedding = nn.Embedding(args.n_items, args.dim, padding_idx=0)
        self.category_embedding = nn.Embedding(args.n_categories, args.dim)
        self.price_projection = nn.Linear(1, args.dim)
        self.text_projection = nn.Linear(args.text_dim, args.dim, bias=False)
        # Side information travels with the weights: a checkpoint is the whole model.
        self.register_buffer("item_category", torch.zeros(args.n_items, dtype=torch.long))
        self.register_buffer("item_log_price", torch.zeros(args.n_items))
        self.register_buffer("item_text", torch.zeros(args.n_items, args.text_dim))
        self.register_buffer("user_history", torch.zeros(args.n_users, args.history_length, dtype=torch.long))
        # Repeat memory: item rows (0 = empty) and purchase counts, most bought first.
        self.register_buffer("user_top_items", torch.zeros(args.n_users, args.repeat_slots, dtype=torch.long))
        self.register_buffer("user_top_counts", torch.zeros(args.n_users, args.repeat_slots))
        self.register_buffer("repeat_weight", torch.zeros(()))
        for table in (self.user_embedding, self.item_embedding, self.category_embedding):
            nn.init.normal_(table.weight, std=0.05)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def item_vectors(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors of ``items``, or of the whole table (row 0 is padding) when None."""
        if items is None:  # the tables themselves: no lookups to differentiate through
            return (
                self.item_embedding.weight
                + self.text_projection(self.item_text)
                + self.category_embedding(self.item_category)
                + self.price_projection(self.item_log_price.unsqueeze(-1))
            )
        price = self.item_log_price[items].unsqueeze(-1)
        return (
            self.item_embedding(items)
            + self.text_projection(self.item_text[items])
            + self.category_embedding(self.item_category[items])
            + self.price_projection(price)
        )

    def user_vectors(self, users: torch.Tensor, item_table: torch.Tensor | None = None) -> torch.Tensor:
        history = self.user_history[users]  # (batch, L), 0 = empty slot
        if item_table is not None:
            # A bag lookup skips the padding slots and has a fast backward on the CPU (indexing
            # the table and summing builds a slow scatter-add there).
            pooled = F.embedding_bag(history, item_table, mode="mean", padding_idx=0)
        else:
            mask = (history > 0).unsqueeze(-1).to(self.user_embedding.weight.dtype)
            pooled = (self.item_vectors(history) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.user_embedding(users) + pooled

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit user vectors of ``users`` and unit item vectors of ``items``."""
        # A batch touches len(users) * history_length + len(items) item rows. When that is more
        # than the catalog, computing every item's vector once and indexing it is cheaper than
        # computing the touched rows one by one (the common case below a few 100k items).
        touched = len(users) * self.args.history_length + len(items)
        if touched >= self.args.n_items:
            table = self.item_vectors()
            return F.normalize(self.user_vectors(users, table), dim=-1), F.normalize(F.embedding(items, table), dim=-1)
        return F.normalize(self.user_vectors(users), dim=-1), F.normalize(self.item_vectors(items), dim=-1)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every real item for each user, shape (len(users), n_items); padding is -inf."""
        all_items = torch.arange(self.args.n_items, device=users.device)
        user_vec, item_vec = self(users, all_items)
        scores = user_vec @ item_vec.T
        if self.args.repeat_slots and float(self.repeat_weight) != 0.0:
            boost = torch.log1p(self.user_top_counts[users]) * self.repeat_weight
            scores.scatter_add_(1, self.user_top_items[users], boost.to(scores.dtype))
        scores[:, 0] = float("-inf")
        return scores

    def grow(self, n_users: int, n_items: int, n_categories: int) -> "TwoTower":
        """A copy with larger tables: old rows kept, new id rows start at zero, so a new item is
        placed by its title, category and price, and a new user by their history."""
        bigger = TwoTower(
            ModelArgs(n_users, n_items, n_categories, self.args.dim, self.args.history_length, self.args.text_dim, self.args.repeat_slots)
        )
        with torch.no_grad():
            for name in ("user_embedding", "item_embedding", "category_embedding"):
                old, new = getattr(self, name).weight, getattr(bigger, name).weight
                new.zero_()
                new[: old.shape[0]] = old
            # Unseen categories start from the average category rather than from nothing.
            n_old_cat = self.category_embedding.weight.shape[0]
            bigger.category_embedding.weight[n_old_cat:] = self.category_embedding.weight[1:].mean(0)
            bigger.price_projection.load_state_dict(self.price_projection.state_dict())
            bigger.text_projection.load_state_dict(self.text_projection.state_dict())
            bigger.item_text[: self.args.n_items] = self.item_text
            bigger.repeat_weight.copy_(self.repeat_weight)
        return bigger

    def model_args(self) -> dict:
        return asdict(self.args)


def sampled_softmax_loss(
    user_vec: torch.Tensor,
    item_vec: torch.Tensor,
    items: torch.Tensor,
    item_log_q: torch.Tensor,
    temperature: float,
    offset: int = 0,
) -> torch.Tensor:
    """In-batch softmax: user j's positive is item ``offset + j``; every other item of the batch is
    a negative. Subtracting log q(item) removes the bias towards popular items that in-batch
    negatives bring. ``user_vec`` may be one process's share of a batch whose items are all in
    ``item_vec`` (data parallel training): ``offset`` places that share."""
    logits = user_vec @ item_vec.T / temperature - item_log_q[items].unsqueeze(0)
    positives = torch.arange(len(user_vec), device=user_vec.device) + offset
    # The same item twice in a batch is not a negative for itself.
    same_item = items.unsqueeze(0) == items[positives].unsqueeze(1)
    not_positive = torch.ones_like(same_item).scatter_(1, positives.unsqueeze(1), False)
    logits = logits.masked_fill(same_item & not_positive, -1e9)
    return F.cross_entropy(logits.float(), positives)
