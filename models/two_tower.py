"""A two-tower retrieval model, small enough to read in one sitting.

Item tower: an id embedding plus a projection of the title's sentence embedding (MiniLM), the
category's embedding and a projection of the log price, so an item nobody has bought yet has a
vector placed by what it is. User tower: an id embedding plus the mean of the item vectors in the
user's recent history, so a new user is placed by what they bought. Scores are cosine
similarities; training uses an in-batch softmax with a logQ correction for item popularity.

Basket memory: for each user, the items of their recent baskets (orders) with time-decayed
weights: a basket counts ``basket_decay`` ** (baskets the user bought after it), and an item's
value is the decayed share of the user's baskets that hold it (TIFU-KNN's personal item
frequency, with one decay instead of groups, so an update folds new baskets in exactly, without
gradient steps). At scoring time an item gains ``memory_weight`` x (the user's own share, plus
``neighbour_share`` x the mean share among the ``neighbours`` users whose memories are most like
theirs (cosine), plus ``popularity_share`` x the item's time-decayed purchases relative to the
most bought item). ``memory_weight`` is calibrated on held-out data after training (see
models.train.calibrate_memory_weight): on a wholesaler's data, where buying again is the norm,
the towers alone cannot say "this customer buys this every month".

Event types: training weighs each row by what its type counts for (``sampled_softmax_loss``'s
``weights``; the memory's sums are folded with the same weights, see models.train). Consumed
items: the (user, item) pairs of the target event are kept as compressed rows, and with
``exclude_consumed`` ``score_all`` gives them -inf, so a shop of one-off goods never serves a
user what they already have.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

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
    repeat_slots: int = 100  # items per user in the basket memory (0: none)
    basket_decay: float = 0.8  # weight of a basket per newer basket of the same user
    neighbours: int = 100  # users whose memories lend a user theirs (0: none)
    neighbour_share: float = 1.0  # weight of the neighbours' mean against the user's own memory
    popularity_share: float = 0.1  # weight of recent popularity against the user's own memory
    popularity_half_life_days: float = 30.0  # half-life of a purchase in the recent popularity
    exclude_consumed: bool = False  # never recommend an item the user already consumed
    # Neighbours are sought among at most this many users, those with the most (decayed)
    # baskets: a user's neighbours cost a similarity to every candidate, so a shop of millions
    # scores at the cost of one of this size. 0: every user.
    neighbour_pool: int = 20_000
    n_consumed: int = 0  # (user, item) pairs consumed: the length of consumed_items


MEMO_ELEMENTS = 2**25  # memory entries memoized_memory keeps at most: 384 MB of (int64 position, float32 value)
# Up to this many users, neighbour similarities come from their sparse memories (a served
# request); more (a held-out evaluation's chunk of hundreds) from their dense rows, which is
# faster there and holds no larger intermediate.
SPARSE_SIMILARITY_USERS = 32


@dataclass(frozen=True)
class CandidateShares:
    """The neighbour candidates' memory shares, (candidates, n_items), compressed by rows (a
    chunk's similarities are about 25x faster than from the coordinate format, with no
    intermediate larger than the result), and the same transposed, compressed by item rows."""

    by_user: torch.Tensor
    by_item: torch.Tensor


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
        # Basket memory: item rows (0 = empty) with their decayed basket counts, largest first;
        # the user's decayed number of baskets; each item's decayed purchases.
        self.register_buffer("memory_items", torch.zeros(args.n_users, args.repeat_slots, dtype=torch.long))
        self.register_buffer("memory_sums", torch.zeros(args.n_users, args.repeat_slots))
        self.register_buffer("memory_baskets", torch.zeros(args.n_users))
        self.register_buffer("item_recent", torch.zeros(args.n_items))
        self.register_buffer("memory_weight", torch.zeros(()))
        # Items each user consumed (had the target event with), as compressed rows: user u's
        # are consumed_items[consumed_indptr[u]:consumed_indptr[u + 1]], sorted.
        self.register_buffer("consumed_indptr", torch.zeros(args.n_users + 1, dtype=torch.long))
        self.register_buffer("consumed_items", torch.zeros(args.n_consumed, dtype=torch.int32))
        self._memory_cache: tuple | None = None
        self._memo: dict | None = None  # memory scores kept while ``memoized_memory`` is open
        for table in (self.user_embedding, self.item_embedding, self.category_embedding):
            nn.init.normal_(table.weight, std=0.05)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()

    def item_vectors(self, items: torch.Tensor | None = None, sparse: bool = False) -> torch.Tensor:
        """Vectors of ``items``, or of the whole table (row 0 is padding) when None. ``sparse``:
        the id table's gradient holds only the rows of ``items``."""
        if items is None:  # the tables themselves: no lookups to differentiate through
            return (
                self.item_embedding.weight
                + self.text_projection(self.item_text)
                + self.category_embedding(self.item_category)
                + self.price_projection(self.item_log_price.unsqueeze(-1))
            )
        price = _rows(self.item_log_price, items).unsqueeze(-1)
        return (
            F.embedding(items, self.item_embedding.weight, padding_idx=0, sparse=sparse)
            + self.text_projection(_rows(self.item_text, items))
            + self.category_embedding(_rows(self.item_category, items))
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

    def forward(self, users: torch.Tensor, items: torch.Tensor, sparse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit user vectors of ``users`` and unit item vectors of ``items``.

        ``sparse``: compute the vector of each item row the batch touches once, and nothing
        else, and give the user and item id tables sparse gradients (the rows looked up), for an
        optimizer that updates only those rows (models.train.LazyAdam): a step then costs the
        same whatever the size of the tables."""
        if sparse:
            return self._touched_forward(users, items)
        # A batch touches len(users) * history_length + len(items) item rows. When that is more
        # than the catalog, computing every item's vector once and indexing it is cheaper than
        # computing the touched rows one by one (the common case below a few 100k items).
        touched = len(users) * self.args.history_length + len(items)
        if touched >= self.args.n_items:
            table = self.item_vectors()
            return F.normalize(self.user_vectors(users, table), dim=-1), F.normalize(F.embedding(items, table), dim=-1)
        return F.normalize(self.user_vectors(users), dim=-1), F.normalize(self.item_vectors(items), dim=-1)

    def _touched_forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        history = _rows(self.user_history, users)
        n_slots = history.numel()
        # Row 0 (padding) joins the touched rows, so it is row 0 of their table too and the bag
        # skips empty history slots as it does on the whole table.
        rows, where = torch.unique(torch.cat([history.new_zeros(1), history.flatten(), items]), return_inverse=True)
        table = self.item_vectors(rows, sparse=True)
        pooled = F.embedding_bag(where[1 : 1 + n_slots].view_as(history), table, mode="mean", padding_idx=0)
        user_vec = F.embedding(users, self.user_embedding.weight, sparse=True) + pooled
        return F.normalize(user_vec, dim=-1), F.normalize(F.embedding(where[1 + n_slots :], table), dim=-1)

    @torch.no_grad()
    def item_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``item_vectors()`` and the same rows at unit length: what ``score_all`` needs of the
        items, computed once for many calls while the weights stay as they are."""
        table = self.item_vectors()
        return table, F.normalize(table, dim=-1)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor, item_tables: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Scores of every real item for each user, shape (len(users), n_items); padding is -inf.
        ``item_tables``: ``item_tables()`` computed once for many calls (the same scores)."""
        table, unit_items = self.item_tables() if item_tables is None else item_tables
        user_vec = F.normalize(self.user_vectors(users, table), dim=-1)
        scores = user_vec @ unit_items.T
        if self.args.repeat_slots and float(self.memory_weight) != 0.0:
            self._add_memory_scores(scores, users, float(self.memory_weight))
        if self.args.exclude_consumed:
            rows, items = self.consumed_pairs(users)
            scores[rows, items] = float("-inf")
        scores[:, 0] = float("-inf")
        return scores

    def consumed_pairs(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(position in ``users``, item row) of every item the users consumed."""
        starts, ends = self.consumed_indptr[users], self.consumed_indptr[users + 1]
        counts = ends - starts
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), counts)
        offsets = torch.arange(int(counts.sum()), device=users.device) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        return rows, self.consumed_items[torch.repeat_interleave(starts, counts) + offsets].long()

    def set_consumed(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """Replace the consumed pairs by these (user row, item row) pairs (duplicates kept once)."""
        pairs = torch.unique(users.long() * self.args.n_items + items.long())  # sorted by user, then item
        by_user = torch.bincount(pairs // self.args.n_items, minlength=self.args.n_users)
        self.consumed_indptr = torch.cat([by_user.new_zeros(1), by_user.cumsum(0)]).to(self.consumed_indptr.device)
        self.consumed_items = (pairs % self.args.n_items).to(torch.int32).to(self.consumed_items.device)
        self.args.n_consumed = len(pairs)

    @contextmanager
    def without_memory(self):
        """While open, the towers score alone (memory weight 0): what a fine-tune can forget."""
        weight = float(self.memory_weight)
        self.memory_weight.fill_(0.0)
        try:
            yield self
        finally:
            self.memory_weight.fill_(weight)

    @contextmanager
    def memoized_memory(self):
        """While open, the memory scores of a set of users are computed once: they depend on the
        memory alone, not on the towers' weights, so scoring the same held-out users after every
        epoch and for every memory weight reuses them. What is kept is each user's personal part
        (own and neighbours' shares: about a thousand items per user, at most ``repeat_slots`` x
        (1 + ``neighbours``)), as (position, value) pairs, so it is bounded by the users, not by
        the catalog; recent popularity is one row, added at scoring time."""
        self._memo = {}
        try:
            yield self
        finally:
            self._memo = None

    @torch.no_grad()
    def memory_scores(self, users: torch.Tensor) -> torch.Tensor:
        """The basket memory's score of every item for each user, shape (len(users), n_items):
        own share + neighbour_share x the neighbours' mean share + popularity_share x recent
        popularity (see the module's docstring)."""
        scores = torch.zeros(len(users), self.args.n_items, device=users.device)
        self._add_memory_scores(scores, users, 1.0)
        return scores

    def _add_memory_scores(self, scores: torch.Tensor, users: torch.Tensor, weight: float) -> None:
        """``scores`` (len(users), n_items, contiguous) += ``weight`` x the users' memory scores."""
        if self._memo is None:  # each chunk's personal part added as it is computed
            for start, personal in self._personal_chunks(users):
                scores[start : start + len(personal)].add_(personal.to(scores.dtype), alpha=weight)
        else:
            positions, values = self._personal_memory(users)
            scores.view(-1).index_add_(0, positions, values.to(scores.dtype), alpha=weight)
        peak = float(self.item_recent.max())
        if self.args.popularity_share and peak > 0:
            scores += (weight * self.args.popularity_share / peak) * self.item_recent.unsqueeze(0).to(scores.dtype)

    def _personal_memory(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The users' own share plus neighbour_share x their neighbours' mean share, as the
        nonzero entries of that (len(users), n_items) matrix: flat positions and values. Kept
        while ``memoized_memory`` is open (which ``_add_memory_scores`` calls this under), up to
        ``MEMO_ELEMENTS`` entries in all."""
        key = (tuple(users.tolist()), self._memory_key(), users.device)
        if key in self._memo:
            return self._memo[key]
        entries = self._compute_personal_memory(users)
        if sum(len(v[0]) for v in self._memo.values()) + len(entries[0]) <= MEMO_ELEMENTS:
            self._memo[key] = entries
        return entries

    def _memory_key(self) -> tuple:
        return tuple((b.data_ptr(), b._version) for b in (self.memory_items, self.memory_sums, self.memory_baskets, self.item_recent))

    def _compute_personal_memory(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions, values = [], []
        for start, result in self._personal_chunks(users):
            rows, items = result.nonzero(as_tuple=True)
            positions.append((rows + start) * self.args.n_items + items)
            values.append(result[rows, items])
        if not positions:
            return torch.zeros(0, dtype=torch.long, device=users.device), torch.zeros(0, device=users.device)
        return torch.cat(positions), torch.cat(values)

    def _personal_chunks(self, users: torch.Tensor):
        """(position of the chunk's first user, its dense (chunk, n_items) personal memory) for
        chunks of ``users`` whose rows and similarities to every candidate stay under about 2^25
        floats each."""
        args = self.args
        shares, candidate_shares, norms, pool, position = self._memory_state()
        candidates = args.n_users if pool is None else len(pool)
        n = min(args.neighbours, candidates - 1)
        step = max(1, min(2**25 // max(1, candidates), 2**25 // args.n_items))
        for start in range(0, len(users), step):
            part = users[start : start + step]
            own = torch.zeros(len(part), args.n_items, device=users.device)
            own.scatter_add_(1, self.memory_items[part], shares[part])
            if n > 0 and args.neighbour_share:
                own += args.neighbour_share * self._neighbour_mean(part, own, shares, candidate_shares, norms, n, pool, position)
            yield start, own

    def _neighbour_mean(self, users, own, shares, candidate_shares, norms, n: int, pool=None, position=None) -> torch.Tensor:
        """Mean memory of each user's ``n`` most similar other users among the candidates (every
        user, or the ``pool``; cosine of the memories; a user with nothing in common lends nothing)."""
        if len(users) <= SPARSE_SIMILARITY_USERS:
            # A few users (a served request): their memories as sparse rows times the candidates'
            # shares by item reads only the items they hold, not every candidate's memory.
            with _sparse_beta():
                memories = _sparse_rows(self.memory_items[users], shares[users], self.args.n_items)
                similarity = (memories @ candidate_shares.by_item).to_dense()
        else:
            similarity = (candidate_shares.by_user @ own.T).T.contiguous()  # (len(users), candidates)
        candidate_norms = norms if pool is None else norms[pool]
        similarity /= (norms[users].unsqueeze(1) * candidate_norms.unsqueeze(0)).clamp(min=1e-12)
        rows = torch.arange(len(users), device=users.device)
        if pool is None:
            similarity[rows, users] = float("-inf")  # not their own neighbour
        else:
            at = position[users]
            similarity[rows[at >= 0], at[at >= 0]] = float("-inf")
        best = similarity.topk(n, dim=1)
        neighbours = best.indices if pool is None else pool[best.indices]
        lend = (best.values > 0).to(shares.dtype) / n  # (len(users), n)
        items = self.memory_items[neighbours].flatten(1)  # (len(users), n * slots)
        values = (shares[neighbours] * lend.unsqueeze(-1)).flatten(1)
        return torch.zeros_like(own).scatter_add_(1, items, values)

    def _memory_state(self) -> tuple:
        """Every user's shares (n_users, slots), the neighbour candidates' shares as sparse
        matrices (``CandidateShares``), every user's norm, and the candidates: None (every user),
        or the ``neighbour_pool`` users with the most baskets with each user's position among
        them (-1: not a candidate). Built once per state of the memory (an in-place change bumps
        a buffer's version; moving the model makes new buffers)."""
        key = self._memory_key()
        if self._memory_cache is None or self._memory_cache[0] != key:
            args = self.args
            shares = self.memory_sums / self.memory_baskets.clamp(min=1e-12).unsqueeze(1)
            pool = position = None
            if 0 < args.neighbour_pool < args.n_users:
                pool = self.memory_baskets.topk(args.neighbour_pool).indices.sort().values
                position = torch.full((args.n_users,), -1, dtype=torch.long, device=shares.device)
                position[pool] = torch.arange(len(pool), device=shares.device)
            candidates = torch.arange(args.n_users, device=shares.device) if pool is None else pool
            with _sparse_beta():
                by_user = _sparse_rows(self.memory_items[candidates], shares[candidates], args.n_items)
                by_item = by_user.to_sparse_coo().t().coalesce().to_sparse_csr()
            self._memory_cache = (key, shares, CandidateShares(by_user, by_item), shares.square().sum(1).sqrt(), pool, position)
        return self._memory_cache[1:]

    def grow(self, n_users: int, n_items: int, n_categories: int) -> "TwoTower":
        """A copy with larger tables: old rows kept, new id rows start at zero, so a new item is
        placed by its title, category and price, and a new user by their history."""
        bigger = TwoTower(
            replace(self.args, n_users=n_users, n_items=n_items, n_categories=n_categories)
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
            bigger.memory_weight.copy_(self.memory_weight)
            rows, items = self.consumed_pairs(torch.arange(self.args.n_users))
            bigger.set_consumed(rows, items)
        return bigger

    def model_args(self) -> dict:
        return asdict(self.args)


@contextmanager
def _sparse_beta():
    """Silences torch's "sparse CSR support is in beta" warning around the calls that use it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def _sparse_rows(items: torch.Tensor, values: torch.Tensor, n_items: int) -> torch.Tensor:
    """(len(items), n_items) compressed by rows: row r holds ``values[r, j]`` at column
    ``items[r, j]`` for every slot j with an item (item row 0 is an empty slot)."""
    kept = items > 0
    rows = torch.arange(len(items), device=items.device).unsqueeze(1).expand_as(kept)[kept]
    return torch.sparse_coo_tensor(
        torch.stack([rows, items[kept]]), values[kept], (len(items), n_items), check_invariants=True,
    ).coalesce().to_sparse_csr()


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]``, by index_select: several times faster on the CPU than indexing."""
    return table.index_select(0, index.flatten()).view(*index.shape, *table.shape[1:])


def sampled_softmax_loss(
    user_vec: torch.Tensor,
    item_vec: torch.Tensor,
    items: torch.Tensor,
    item_log_q: torch.Tensor,
    temperature: float,
    offset: int = 0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch softmax: user j's positive is item ``offset + j``; every other item of the batch is
    a negative. Subtracting log q(item) removes the bias towards popular items that in-batch
    negatives bring. ``user_vec`` may be one process's share of a batch whose items are all in
    ``item_vec`` (data parallel training): ``offset`` places that share. ``weights`` (one per
    user row: what its event type counts for) make the loss their weighted mean."""
    logits = user_vec @ item_vec.T / temperature - item_log_q[items].unsqueeze(0)
    positives = torch.arange(len(user_vec), device=user_vec.device) + offset
    # The same item twice in a batch is not a negative for itself. (In place: the positives lie
    # on a diagonal, and logits is a fresh tensor that no backward reads.)
    same_item = items.unsqueeze(0) == items[positives].unsqueeze(1)
    same_item.diagonal(offset).fill_(False)
    logits.masked_fill_(same_item, -1e9)
    if weights is None:
        return F.cross_entropy(logits.float(), positives)
    losses = F.cross_entropy(logits.float(), positives, reduction="none")
    return (losses * weights).sum() / weights.sum().clamp(min=1e-12)
