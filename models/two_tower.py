"""A two-tower retrieval model, small enough to read in one sitting.

Item tower: an id embedding plus the item's category embedding and a projection of its log
price, so an item nobody has bought yet still has a vector. User tower: an id embedding plus the
mean of the item vectors in the user's recent history, so a new user is placed by what they
bought. Scores are dot products; training uses an in-batch softmax with a logQ correction for
item popularity.
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


class TwoTower(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.user_embedding = nn.Embedding(args.n_users, args.dim)
        self.item_embedding = nn.Embedding(args.n_items, args.dim, padding_idx=0)
        self.category_embedding = nn.Embedding(args.n_categories, args.dim)
        self.price_projection = nn.Linear(1, args.dim)
        # Side information travels with the weights: a checkpoint is the whole model.
        self.register_buffer("item_category", torch.zeros(args.n_items, dtype=torch.long))
        self.register_buffer("item_log_price", torch.zeros(args.n_items))
        self.register_buffer("user_history", torch.zeros(args.n_users, args.history_length, dtype=torch.long))
        for table in (self.user_embedding, self.item_embedding, self.category_embedding):
            nn.init.normal_(table.weight, std=0.05)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        price = self.item_log_price[items].unsqueeze(-1)
        return (
            self.item_embedding(items)
            + self.category_embedding(self.item_category[items])
            + self.price_projection(price)
        )

    def user_vectors(self, users: torch.Tensor, item_table: torch.Tensor | None = None) -> torch.Tensor:
        history = self.user_history[users]  # (batch, L), 0 = empty slot
        mask = (history > 0).unsqueeze(-1).to(self.user_embedding.weight.dtype)
        history_vectors = item_table[history] if item_table is not None else self.item_vectors(history)
        pooled = (history_vectors * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.user_embedding(users) + pooled

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # A batch touches len(users) * (history_length + 1) item rows. When that is more than the
        # catalog, computing every item's vector once and indexing it is cheaper than computing
        # the touched rows one by one (and it is the common case below a few 100k items).
        touched = len(users) * (self.args.history_length + 1)
        if touched >= self.args.n_items:
            table = self.item_vectors(torch.arange(self.args.n_items, device=users.device))
            return F.normalize(self.user_vectors(users, table), dim=-1), F.normalize(table[items], dim=-1)
        return F.normalize(self.user_vectors(users), dim=-1), F.normalize(self.item_vectors(items), dim=-1)

    def in_batch_loss(
        self, users: torch.Tensor, items: torch.Tensor, item_log_q: torch.Tensor, temperature: float
    ) -> torch.Tensor:
        """Sampled softmax over the batch's items; subtracting log q(item) removes the bias
        towards popular items that in-batch negatives introduce."""
        user_vec, item_vec = self(users, items)
        logits = user_vec @ item_vec.T / temperature - item_log_q[items].unsqueeze(0)
        # The same item twice in a batch is not a negative for itself.
        same_item = items.unsqueeze(0) == items.unsqueeze(1)
        logits = logits.masked_fill(same_item & ~torch.eye(len(items), dtype=torch.bool, device=items.device), -1e9)
        return F.cross_entropy(logits, torch.arange(len(users), device=users.device))

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every real item for each user, shape (len(users), n_items); padding is -inf."""
        all_items = torch.arange(self.args.n_items, device=users.device)
        user_vec, item_vec = self(users, all_items)
        scores = user_vec @ item_vec.T
        scores[:, 0] = float("-inf")
        return scores

    def grow(self, n_users: int, n_items: int, n_categories: int) -> "TwoTower":
        """A copy with larger tables: old rows kept, new id rows start at zero, so a new item is
        placed by its category and price and a new user by their history."""
        bigger = TwoTower(ModelArgs(n_users, n_items, n_categories, self.args.dim, self.args.history_length))
        with torch.no_grad():
            for name in ("user_embedding", "item_embedding", "category_embedding"):
                old, new = getattr(self, name).weight, getattr(bigger, name).weight
                new.zero_()
                new[: old.shape[0]] = old
            # Unseen categories start from the average category rather than from nothing.
            n_old_cat = self.category_embedding.weight.shape[0]
            bigger.category_embedding.weight[n_old_cat:] = self.category_embedding.weight[1:].mean(0)
            bigger.price_projection.load_state_dict(self.price_projection.state_dict())
        return bigger

    def model_args(self) -> dict:
        return asdict(self.args)
