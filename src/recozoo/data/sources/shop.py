"""A synthetic long-tail shop: seeded e-commerce logs with a known structure (``data=shop``).

The generative process, in order:

1. **Catalogue.** ``n_top`` top categories (electronics, kitchen, garden ...), each with
   sub-categories (headphones, chargers ...). Each top category has a few brands. Every item
   gets a sub-category, a brand, a price level (1-5) with a price drawn around it, a few
   attributes (colour, material, style) and a title made of those words, e.g.
   ``"Norvex wireless black headphones"``. Text therefore carries the item's category, brand and
   price signal, which a text model can use for items with few interactions.
2. **Popularity.** Items get a latent popularity from a power law: the item of popularity rank
   ``r`` within its sub-category has weight ``r ** -popularity_exponent``, and sub-categories
   themselves differ in size of audience. With the defaults the top 20% of items receive about
   70-80% of interactions, and many items have fewer than 5.
3. **Users.** Each user has tastes over top categories (a sparse Dirichlet) and a preferred
   price level.
4. **Sessions.** A user has a Poisson number of sessions spread over ``days`` days; a session is
   a walk of views. The next item is, with probability ``p_companion``, the current item's
   companion (an item in a complementary sub-category: charger after phone); with probability
   ``p_same_subcategory`` another item of the same sub-category; otherwise a fresh draw from the
   user's tastes. Items are drawn by popularity times price affinity. This makes the order of
   events informative: sequential models can beat order-blind ones.
5. **Events.** Each view may lead to a cart (``p_cart``, higher when the price suits the user)
   and a cart to a purchase (``p_purchase``); these are extra events on the same item, a few
   minutes later. Purchases are the rarest event.

Everything is a function of the seed and the arguments, so a run is reproducible anywhere; the
generated logs are cached as Parquet under ``cache_dir`` keyed by those arguments.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recozoo import artifacts
from recozoo.data.interactions import EVENT_CODES, Interactions

log = logging.getLogger(__name__)

#: the shop's item text: the canonical columns plus its price word
SHOP_TEXT_TEMPLATE = "{title}. {category}. {brand}. {price_word} price."

_CATALOGUE: dict[str, list[str]] = {
    "electronics": ["headphones", "charger", "speaker", "cable", "keyboard", "mouse"],
    "kitchen": ["knife", "frying pan", "kettle", "blender", "mug", "cutting board"],
    "garden": ["hose", "shovel", "planter", "seeds", "gloves", "lawn lamp"],
    "sports": ["running shoes", "yoga mat", "dumbbell", "water bottle", "tennis racket", "backpack"],
    "beauty": ["shampoo", "face cream", "lipstick", "perfume", "hair brush", "nail polish"],
    "toys": ["puzzle", "building blocks", "doll", "toy car", "board game", "plush bear"],
    "office": ["notebook", "pen", "stapler", "desk lamp", "folder", "calculator"],
    "pets": ["dog food", "cat litter", "leash", "pet bed", "chew toy", "aquarium filter"],
    "books": ["novel", "cookbook", "travel guide", "comic", "biography", "textbook"],
    "tools": ["drill", "hammer", "screwdriver", "tape measure", "wrench", "saw"],
}
_ATTRIBUTES = {
    "colour": ["black", "white", "red", "blue", "green", "grey", "pink", "silver"],
    "material": ["steel", "wooden", "plastic", "cotton", "leather", "glass", "bamboo"],
    "style": ["compact", "classic", "premium", "eco", "portable", "deluxe", "mini", "pro"],
}
_PRICE_WORDS = ["budget", "value", "standard", "quality", "luxury"]
_SYLLABLES = ["nor", "vex", "zan", "tro", "lum", "kai", "dex", "ora", "vin", "pel", "sko", "mar"]


@dataclass
class ShopSource:
    """Generate the synthetic shop (see the module docstring for the process).

    Args:
        n_users: number of shoppers.
        n_items: catalogue size.
        sessions_per_user: mean number of sessions (Poisson, at least one).
        session_length: mean views per session (geometric, at least two).
        popularity_exponent: power-law exponent of item popularity within a sub-category.
        n_top: number of top categories used (at most 10).
        p_companion / p_same_subcategory: sequential structure of a session.
        p_cart / p_purchase: event funnel.
        days: time span of the logs.
        seed: the generator's seed (independent of the training seed).
        cache_dir: where to cache the generated logs; None disables caching.
        text_template: item text template over ``title``, ``category``, ``brand``, ``price``,
            ``price_word`` (`recozoo.data.text.render_item_text`).
        vectorised: walk all sessions at once in NumPy arrays (`_walk_sessions`): the same
            process, drawn in another order, so the logs differ from the default's; 10^6 events
            take seconds instead of minutes. For large synthetic shops (``recozoo.bench.scaling``).
    """

    n_users: int = 3000
    n_items: int = 2000
    sessions_per_user: float = 4.0
    session_length: float = 6.0
    popularity_exponent: float = 1.4
    n_top: int = 10
    p_companion: float = 0.45
    p_same_subcategory: float = 0.25
    p_cart: float = 0.15
    p_purchase: float = 0.4
    days: int = 180
    seed: int = 7
    cache_dir: str | None = None
    name: str = "shop"
    text_template: str = SHOP_TEXT_TEMPLATE
    vectorised: bool = False

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_items < 10:
            raise ValueError(f"shop needs n_users >= 1 and n_items >= 10, "
                             f"got n_users={self.n_users}, n_items={self.n_items}")
        if not 1 <= self.n_top <= len(_CATALOGUE):
            raise ValueError(f"shop n_top must be in 1..{len(_CATALOGUE)}, got {self.n_top}")
        if self.p_companion + self.p_same_subcategory > 1:
            raise ValueError("shop p_companion + p_same_subcategory must be at most 1, got "
                             f"{self.p_companion + self.p_same_subcategory}")

    def _key(self) -> str:
        # what shapes the generated logs (not where they are cached nor how text is rendered)
        params = {k: v for k, v in asdict(self).items() if k not in ("cache_dir", "text_template")}
        return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]

    def load(self) -> Interactions:
        """The shop's logs, from the cache when present."""
        if self.cache_dir:
            folder = Path(self.cache_dir).expanduser() / f"shop-{self._key()}"
            if (folder / "items.parquet").exists():
                return _read_cached(folder, self.name, self.text_template)
            events, items = self.generate()
            # write, then rename (items last: the marker of a complete entry), so parallel jobs
            # that generate the same shop never read a file another is still writing
            for name, frame in (("events", events), ("items", items)):
                artifacts.write_parquet(folder / f"{name}.parquet", frame)
            return _to_interactions(events, items, self.name, self.text_template)
        events, items = self.generate()
        return _to_interactions(events, items, self.name, self.text_template)

    def generate(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Generate (events, items) frames with external ids."""
        rng = np.random.default_rng(self.seed)
        tops = list(_CATALOGUE)[: self.n_top]
        subcats = [(top, sub) for top in tops for sub in _CATALOGUE[top]]
        subcats = subcats[:: max(1, -(-len(subcats) // self.n_items))]  # each needs an item
        tops = sorted({top for top, _ in subcats}, key=tops.index)
        n_sub = len(subcats)
        sub_top = np.array([tops.index(top) for top, _ in subcats])

        # catalogue
        item_sub = rng.integers(0, n_sub, self.n_items)
        item_sub[:n_sub] = np.arange(min(n_sub, self.n_items))  # every sub-category has an item
        brands = {top: ["".join(rng.choice(_SYLLABLES, 2)).capitalize() for _ in range(5)]
                  for top in tops}
        item_brand = [brands[subcats[s][0]][rng.integers(5)] for s in item_sub]
        price_level = rng.integers(1, 6, self.n_items)
        price = np.round(np.exp(rng.normal(1.2 + 0.8 * price_level, 0.3)), 2)
        attrs = {name: rng.choice(words, self.n_items) for name, words in _ATTRIBUTES.items()}
        titles = [
            f"{item_brand[i]} {attrs['style'][i]} {attrs['colour'][i]} {attrs['material'][i]} "
            f"{subcats[item_sub[i]][1]}"
            for i in range(self.n_items)
        ]
        # popularity: power law by rank within each sub-category, sub-categories of varied reach
        item_weight = np.empty(self.n_items)
        members: list[np.ndarray] = []
        for s in range(n_sub):
            idx = np.flatnonzero(item_sub == s)
            idx = idx[rng.permutation(len(idx))]
            item_weight[idx] = np.arange(1, len(idx) + 1) ** -self.popularity_exponent
            members.append(idx)
        sub_reach = rng.lognormal(0.0, 0.6, n_sub)
        # complementary sub-category and a companion item for every item
        next_sub = np.array([rng.choice(np.flatnonzero(sub_top == sub_top[s])) if rng.random() < 0.6
                             else rng.integers(n_sub) for s in range(n_sub)])
        companion = np.empty(self.n_items, dtype=np.int64)
        if self.vectorised:  # one draw per sub-category instead of one per item
            for s in range(n_sub):
                idx, pool = np.flatnonzero(item_sub == s), members[next_sub[s]]
                p = item_weight[pool] ** 0.5
                companion[idx] = pool[rng.choice(len(pool), len(idx), p=p / p.sum())]
        for i in range(0 if self.vectorised else self.n_items):
            pool = members[next_sub[item_sub[i]]]
            p = item_weight[pool] ** 0.5
            companion[i] = pool[rng.choice(len(pool), p=p / p.sum())]

        # users
        taste = rng.dirichlet(np.full(len(tops), 0.3), self.n_users)  # (n_users, n_top)
        user_price = rng.integers(1, 6, self.n_users)
        n_sessions = np.maximum(1, rng.poisson(self.sessions_per_user, self.n_users))

        rows_user, rows_item, rows_time, rows_event = [], [], [], []
        horizon = self.days * 86400.0
        p_sub_given_top = [sub_reach * (sub_top == t) for t in range(len(tops))]
        p_sub_given_top = [p / p.sum() for p in p_sub_given_top]

        def draw_item(sub: int, user_level: int) -> int:
            pool = members[sub]
            w = item_weight[pool] * np.exp(-0.7 * np.abs(price_level[pool] - user_level))
            return int(pool[np.searchsorted(np.cumsum(w), rng.random() * w.sum())])

        if self.vectorised:
            rows_user, rows_item, rows_time, rows_event = _walk_sessions(
                self, rng, n_sessions, taste, user_price, np.asarray(p_sub_given_top), members,
                item_weight, price_level, item_sub, companion)
        for u in range(0 if self.vectorised else self.n_users):
            starts = np.sort(rng.random(n_sessions[u]) * horizon)
            for start in starts:
                length = 1 + rng.geometric(1.0 / max(self.session_length - 1, 1.0))
                t = start
                sub = rng.choice(n_sub, p=p_sub_given_top[rng.choice(len(tops), p=taste[u])])
                item = draw_item(sub, user_price[u])
                for step in range(length):
                    if step:
                        r = rng.random()
                        if r < self.p_companion:
                            item = int(companion[item])
                        elif r < self.p_companion + self.p_same_subcategory:
                            item = draw_item(int(item_sub[item]), user_price[u])
                        else:
                            top = rng.choice(len(tops), p=taste[u])
                            item = draw_item(rng.choice(n_sub, p=p_sub_given_top[top]),
                                             user_price[u])
                    t += rng.exponential(120.0) + 5.0
                    rows_user.append(u); rows_item.append(item); rows_time.append(t)
                    rows_event.append(EVENT_CODES["view"])
                    affinity = 1.5 if price_level[item] == user_price[u] else 0.7
                    if rng.random() < self.p_cart * affinity:
                        t += rng.exponential(60.0) + 5.0
                        rows_user.append(u); rows_item.append(item); rows_time.append(t)
                        rows_event.append(EVENT_CODES["cart"])
                        if rng.random() < self.p_purchase:
                            t += rng.exponential(60.0) + 5.0
                            rows_user.append(u); rows_item.append(item); rows_time.append(t)
                            rows_event.append(EVENT_CODES["purchase"])

        events = pd.DataFrame({
            "user_id": "u" + pd.Series(rows_user, dtype=str),
            "item_id": "i" + pd.Series(rows_item, dtype=str),
            "timestamp": np.round(rows_time, 1),
            "event": np.asarray(rows_event, dtype=np.int8),
        })
        items = pd.DataFrame({
            "item_id": [f"i{i}" for i in range(self.n_items)],
            "title": titles,
            "category": [f"{subcats[s][0]} > {subcats[s][1]}" for s in item_sub],
            "brand": item_brand,
            "price": price,
            "price_word": [_PRICE_WORDS[p - 1] for p in price_level],
        })
        log.info("generated shop: %d users, %d items, %d events", self.n_users, self.n_items,
                 len(events))
        return events, items


def _to_interactions(events: pd.DataFrame, items: pd.DataFrame, name: str,
                     text_template: str = SHOP_TEXT_TEMPLATE) -> Interactions:
    return Interactions.from_frame(
        events, event_col="event", items=items, text_template=text_template,
        category_col="category", title_col="title", numeric_cols=("price",), name=name,
    )


def _read_cached(folder: Path, name: str, text_template: str = SHOP_TEXT_TEMPLATE
                 ) -> Interactions:
    return _to_interactions(pd.read_parquet(folder / "events.parquet"),
                            pd.read_parquet(folder / "items.parquet"), name, text_template)


class _GroupedDraw:
    """Many categorical distributions, drawn from all at once.

    Group g's cumulative probabilities are stored as ``g + cdf`` in one increasing array, so a
    single ``searchsorted`` draws for a whole array of groups. Returns, per draw, the position
    in the stacked array (for a 2-D table of weights: the column, i.e. the category).

    Args:
        weights: a (groups, categories) array, or a list of 1-D arrays of varied lengths.
    """

    def __init__(self, weights: np.ndarray | list[np.ndarray]):
        if isinstance(weights, np.ndarray):
            cdf = np.cumsum(weights, 1) / weights.sum(1, keepdims=True)
            cdf[:, -1] = 1.0
            self.start = np.arange(len(weights) + 1) * weights.shape[1]
            self.cumulative = (np.arange(len(weights))[:, None] + cdf).ravel()
            self.width = weights.shape[1]
        else:
            cdfs = [np.cumsum(w) / w.sum() for w in weights]
            for cdf in cdfs:
                cdf[-1] = 1.0
            self.start = np.r_[0, np.cumsum([len(c) for c in cdfs])]
            self.cumulative = np.concatenate([g + c for g, c in enumerate(cdfs)])
            self.width = None

    def __call__(self, group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        pos = np.searchsorted(self.cumulative, group + rng.random(len(group)), side="right")
        pos = np.minimum(pos, self.start[group + 1] - 1)  # u + g may round up to g + 1
        return pos - self.start[group] if self.width is not None else pos


def _walk_sessions(shop: ShopSource, rng: np.random.Generator, n_sessions: np.ndarray,
                   taste: np.ndarray, user_price: np.ndarray, p_sub_given_top: np.ndarray,
                   members: list[np.ndarray], item_weight: np.ndarray, price_level: np.ndarray,
                   item_sub: np.ndarray, companion: np.ndarray,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The session walk of `ShopSource.generate`, one NumPy step for all sessions at once.

    Returns (user, item, time, event) arrays, user by user, each user's events in time order.
    """
    n_sub = p_sub_given_top.shape[1]
    # weighted item draws within a sub-category for a user's price level (1-5)
    pools = [members[sub] for sub in range(n_sub) for _ in range(5)]
    item_draw = _GroupedDraw([item_weight[pool] * np.exp(-0.7 * np.abs(price_level[pool] - level))
                              for pool in members for level in range(1, 6)])
    pools_flat = np.concatenate(pools)
    top_draw, sub_draw = _GroupedDraw(taste), _GroupedDraw(p_sub_given_top)

    def draw_item(sub: np.ndarray, level: np.ndarray) -> np.ndarray:
        return pools_flat[item_draw(sub * 5 + level - 1, rng)]

    def fresh_item(user: np.ndarray) -> np.ndarray:
        return draw_item(sub_draw(top_draw(user, rng), rng), user_price[user])

    # sessions, user by user, in time order
    session_user = np.repeat(np.arange(len(n_sessions)), n_sessions)
    start = rng.random(len(session_user)) * shop.days * 86400.0
    order = np.lexsort((start, session_user))
    session_user, start = session_user[order], start[order]
    length = 1 + rng.geometric(1.0 / max(shop.session_length - 1, 1.0), len(session_user))
    # views: step 0 is a fresh draw; each next view follows the session's current item
    current = fresh_item(session_user)  # (n_sessions,)
    active = np.arange(len(session_user))
    views_session, views_item = [active], [current.copy()]
    for step in range(1, int(length.max())):
        active = active[length[active] > step]
        user, item = session_user[active], current[active]
        r = rng.random(len(active))
        follow = r < shop.p_companion
        same = ~follow & (r < shop.p_companion + shop.p_same_subcategory)
        fresh = ~follow & ~same
        item[follow] = companion[item[follow]]
        item[same] = draw_item(item_sub[item[same]], user_price[user[same]])
        item[fresh] = fresh_item(user[fresh])
        current[active] = item
        views_session.append(active)
        views_item.append(item)
    view_session = np.concatenate(views_session)
    view_step = np.concatenate([np.full(len(a), s) for s, a in enumerate(views_session)])
    view_item = np.concatenate(views_item)
    # the funnel: a view may add a cart event, a cart a purchase, minutes later
    view_user = session_user[view_session]
    affinity = np.where(price_level[view_item] == user_price[view_user], 1.5, 0.7)
    cart = rng.random(len(view_item)) < shop.p_cart * affinity
    purchase = cart & (rng.random(len(view_item)) < shop.p_purchase)
    kinds = np.stack([np.full(len(view_item), EVENT_CODES["view"]),
                      np.full(len(view_item), EVENT_CODES["cart"]),
                      np.full(len(view_item), EVENT_CODES["purchase"])], 1)
    gaps = np.stack([rng.exponential(120.0, len(view_item)), rng.exponential(60.0, len(view_item)),
                     rng.exponential(60.0, len(view_item))], 1) + 5.0
    keep = np.stack([np.ones(len(view_item), bool), cart, purchase], 1)
    order = np.lexsort((view_step, view_session))  # session by session, view by view
    keep, kinds, gaps = keep[order], kinds[order], gaps[order]
    event_session = np.repeat(view_session[order], 3)[keep.ravel()]
    event_item = np.repeat(view_item[order], 3)[keep.ravel()]
    event_kind, event_gap = kinds.ravel()[keep.ravel()], gaps.ravel()[keep.ravel()]
    # time: session start + the gaps so far within the session
    elapsed = np.cumsum(event_gap)
    first = np.r_[0, np.flatnonzero(np.diff(event_session)) + 1]
    before = np.repeat(elapsed[first] - event_gap[first],
                       np.diff(np.r_[first, len(event_session)]))
    event_time = start[event_session] + elapsed - before
    return session_user[event_session], event_item, event_time, event_kind.astype(np.int8)
