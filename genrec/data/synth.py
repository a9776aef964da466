"""Synthetic interactions: a titled catalog and user logs with learnable sequential structure.

This is the embedded default data set, so the whole pipeline runs, and can be checked, without
downloads. The structure is planted so that a sequential model has something to learn that a
popularity model cannot see:

- items come in series ("The Glass Harbor", "The Glass Harbor 2: Northern Tide", ...); after part k,
  part k+1 is the likely next item;
- otherwise a user stays in the genre of the current item, or moves to another genre they like;
- within a genre, items are drawn by a Zipf-like popularity, so most-popular is a fair baseline.

Logs are one Markov chain per user, stepped for all users at once with numpy (a user's state is
its current item), in chunks of users so the working arrays stay small; the result is one table
(about 0.7 GB for 25 million rows).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from genrec.config import SynthInteractionsConfig

from genrec.config_loader import to_dict

# ------------------------------------------------------------------------------ behaviour knobs
P_NEXT_PART = 0.7  # after part k of a series, how often the user reads part k+1 next
P_SAME_GENRE = 0.6  # otherwise, how often the next item stays in the current item's genre
TASTE_GENRES = 3  # genres each user likes (fewer when the catalog has fewer)
SERIES_POPULARITY_EXPONENT = 0.9  # Zipf exponent over series: a few hits, a long tail
PART_DECAY = 0.6  # later parts are less often picked at random: people start series at part 1
GENRE_POPULARITY_EXPONENT = 0.5  # some genres are liked by more users than others
SERIES_LENGTH_PMF = (0.35, 0.2, 0.15, 0.12, 0.08, 0.06, 0.04)  # parts per series: 1..7
USER_CHUNK = 16384  # users simulated together; bounds the working memory per chunk

# ------------------------------------------------------------------------------ timestamps
START_TIME = 1_514_764_800  # 2018-01-01, unix seconds
START_SPREAD_S = 3 * 365 * 86400  # first interactions spread over three years
MEAN_GAP_S = 86400  # mean time between a user's interactions
P_EQUAL_TIME = 0.03  # share of interactions logged in the same second as the previous one,
#                      so readers must keep file order for ties

# ------------------------------------------------------------------------------ vocabulary
GENRES = (
    "Science Fiction", "Mystery", "Fantasy", "Romance", "Thriller", "Historical Fiction", "Horror",
    "Adventure", "Comedy", "Drama", "Western", "Cyberpunk", "Noir", "Space Opera", "Poetry",
    "Biography", "Travel", "Cooking", "Mythology", "Satire", "Steampunk", "Fairy Tales", "War",
    "Sports",
)
GENRE_PREFIXES = ("", "Dark ", "Cozy ", "Urban ", "Epic ", "Classic ", "Modern ")
ADJECTIVES = (
    "Amber", "Ashen", "Autumn", "Azure", "Bitter", "Black", "Blind", "Bright", "Broken", "Burning",
    "Buried", "Calm", "Cobalt", "Cold", "Copper", "Crimson", "Crooked", "Crystal", "Dark", "Dawn",
    "Deep", "Distant", "Drowned", "Dusky", "Eastern", "Electric", "Emerald", "Empty", "Endless",
    "Fading", "Fallen", "Far", "Fierce", "Final", "First", "Floating", "Forgotten", "Frozen",
    "Gentle", "Ghost", "Gilded", "Glass", "Golden", "Gray", "Hidden", "Hollow", "Howling", "Hungry",
    "Idle", "Iron", "Ivory", "Jade", "Last", "Lonely", "Lost", "Lucky", "Lunar", "Midnight",
    "Mirrored", "Misty", "Northern", "Obsidian", "Painted", "Pale", "Paper", "Quiet", "Radiant",
    "Ragged", "Red", "Restless", "Rising", "Roaming", "Rusted", "Sacred", "Scarlet", "Secret",
    "Shattered", "Shining", "Silent", "Silver", "Sleeping", "Southern", "Stolen", "Stone",
    "Strange", "Sunken", "Sunlit", "Tangled", "Thousand", "Twilight", "Velvet", "Wandering",
    "Western", "Whispering", "White", "Wicked", "Wild", "Wooden", "Brave", "Clever", "Cursed",
    "Dreaming", "Eternal", "Faithful", "Gleaming", "Great", "Humble", "Infinite", "Kind", "Little",
    "Marble", "Mighty", "Narrow", "Open", "Proud", "Royal", "Savage", "Tender", "Wounded", "Young",
)
NOUNS = (
    "Harbor", "Orbit", "Tide", "Crown", "Garden", "Lantern", "River", "Tower", "Forest", "Engine",
    "Compass", "Citadel", "Meadow", "Mirror", "Voyage", "Kingdom", "Signal", "Frontier", "Archive",
    "Bridge", "Canyon", "Carnival", "Cathedral", "Circuit", "Comet", "Covenant", "Desert",
    "Dominion", "Echo", "Empire", "Falcon", "Fortress", "Gate", "Glacier", "Harvest", "Horizon",
    "Island", "Journey", "Key", "Labyrinth", "Lighthouse", "Machine", "Market", "Mountain",
    "Nebula", "Oracle", "Outpost", "Palace", "Passage", "Pilgrim", "Prophecy", "Quarry", "Railway",
    "Reef", "Refuge", "Relic", "Requiem", "Rider", "Sanctuary", "Sea", "Sentinel", "Serpent",
    "Shore", "Sky", "Song", "Spire", "Station", "Storm", "Summit", "Sword", "Temple", "Throne",
    "Valley", "Vault", "Voice", "Wanderer", "Watch", "Well", "Wind", "Wolf", "Atlas", "Beacon",
    "Cipher", "Clockwork", "Colony", "Crossing", "Dagger", "Dynasty", "Ember", "Estate", "Ferry",
    "Flame", "Garrison", "Guild", "Hearth", "Heir", "Hunter", "Inn", "Keeper", "Lagoon", "Legacy",
    "Manor", "Mariner", "Monarch", "Moon", "Mosaic", "Nomad", "Orchard", "Pact", "Paradox",
    "Phoenix", "Quest", "Raven", "Rebellion", "Reckoning", "Saga", "Scholar", "Shadow", "Sparrow",
    "Star", "Thief", "Trail", "Vanguard", "Vessel", "Village", "Vow", "Waltz", "Warden", "Willow",
    "Witness", "Zenith", "Anchor", "Arrow", "Bell", "Blade", "Cartographer", "Chronicle", "Cloak",
    "Current", "Diver", "Drum", "Expedition", "Fjord", "Gambit", "Herald", "Isle", "Jungle", "Kite",
    "Mill", "Mine", "Navigator", "Observatory", "Pier", "Pirate", "Prism", "Queen", "Ranger",
    "Ridge", "Ruin", "Ship", "Spring", "Tunnel", "Veil", "Wall",
)
OF_NOUNS = (
    "Ashes", "Storms", "Silence", "Shadows", "Stars", "Thorns", "Whispers", "Kings", "Wolves",
    "Time", "Salt", "Smoke", "Embers", "Rain", "Bones", "Feathers", "Dust", "Dreams", "Winter",
    "Mirrors", "Ghosts", "Tides", "Lanterns", "Ravens", "Roses", "Secrets", "Sorrow", "Thunder",
    "Honey", "Gold", "Fire", "Frost", "Echoes", "Sand", "Clocks", "Lies", "Giants", "Rivers",
    "Summer", "Lilies", "Masks", "Wings", "Crowns", "Ruins", "Tomorrow", "Yesterday", "Lightning",
    "Spices", "Orchids", "Moths", "Bells", "Keys",
)
NAMES = (
    "Marlow", "Ada", "Elias", "Juniper", "Felix", "Iris", "Oscar", "Nora", "Silas", "Mira",
    "August", "Clara", "Theo", "Vera", "Hugo", "Lena", "Jasper", "Wren", "Otto", "Hazel", "Milo",
    "Greta", "Rowan", "Ivy", "Caspar", "Delphine", "Edgar", "Flora", "Gideon", "Ingrid", "Leo",
    "Maeve", "Nico", "Olive", "Percy", "Quinn", "Rosa", "Soren", "Tessa", "Ulric", "Wendell",
    "Yara", "Zora", "Anselm", "Beatrix", "Cyrus", "Dora", "Emil", "Freya", "Gus", "Helena", "Ivo",
    "Jonah", "Kira", "Lionel", "Magnus", "Ophelia", "Pilar", "Rufus", "Sybil",
)
NUMBER_WORDS = ("One", "Two", "Three", "Four", "Five", "Six", "Seven")
ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII")


# ------------------------------------------------------------------------------ public API
INTERACTIONS_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64())])


def synth_interactions(cfg: SynthInteractionsConfig) -> dict:
    """Write interactions, catalog.parquet and synth.json to cfg.out_dir; return the summary."""
    started = time.perf_counter()
    interactions, catalog = generate(
        cfg.num_users, cfg.num_items, cfg.num_genres, cfg.min_len, cfg.max_len, cfg.seed
    )
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.format == "csv":
        interactions_path = out / "interactions.csv"
        pa_csv.write_csv(interactions, interactions_path)
    else:
        interactions_path = out / "interactions.parquet"
        pq.write_table(interactions, interactions_path)
    pq.write_table(catalog, out / "catalog.parquet")
    summary = {
        "users": cfg.num_users,
        "items": catalog.num_rows,
        "genres": cfg.num_genres,
        "interactions": interactions.num_rows,
        "interactions_path": str(interactions_path),
        "catalog_path": str(out / "catalog.parquet"),
        "seconds": round(time.perf_counter() - started, 3),
    }
    # The timing varies run to run; leave it out of synth.json so that same seed = same files.
    recorded = {k: v for k, v in summary.items() if k != "seconds"}
    (out / "synth.json").write_text(json.dumps({"config": to_dict(cfg), "summary": recorded}, indent=2) + "\n")
    return summary


def generate(
    num_users: int,
    num_items: int,
    num_genres: int,
    min_len: int,
    max_len: int,
    seed: int,
    mean_len: float | None = None,
) -> tuple[pa.Table, pa.Table]:
    """(interactions, catalog) as pyarrow tables; the same arguments give the same tables.

    interactions: user_id, item_id, timestamp (int64 seconds), rows grouped by user in log order.
    catalog: item_id, title, genre, sorted by item_id.
    mean_len: mean log length (default a third of the way from min_len to max_len); lengths
    follow a truncated geometric law, so most logs are short and a few are long, as in real logs.
    """
    _check_args(num_users, num_items, num_genres, min_len, max_len, mean_len)
    rng = np.random.default_rng(seed)
    catalog = _build_catalog(num_items, num_genres, rng)
    lengths = _sample_lengths(num_users, min_len, max_len, mean_len, rng)
    user_ids = _ids("u", num_users, 6)
    batches = [
        _simulate_users(catalog, user_ids[start:start + USER_CHUNK], lengths[start:start + USER_CHUNK], rng)
        for start in range(0, num_users, USER_CHUNK)
    ]
    return pa.Table.from_batches(batches, schema=INTERACTIONS_SCHEMA), catalog.table


def _check_args(num_users, num_items, num_genres, min_len, max_len, mean_len) -> None:
    if num_users < 1 or num_genres < 1:
        raise ValueError(f"num_users={num_users} and num_genres={num_genres} must be at least 1")
    if num_items < num_genres:
        raise ValueError(f"num_items={num_items} is fewer than num_genres={num_genres}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    midpoint = (min_len + max_len) / 2
    if mean_len is not None and mean_len != min_len and not min_len < mean_len < midpoint:
        raise ValueError(f"mean_len={mean_len} must lie in [min_len, (min_len + max_len) / 2) "
                         f"= [{min_len}, {midpoint}): lengths are long-tailed")


def _ids(prefix: str, n: int, min_digits: int) -> pa.Array:
    """'u000123'-style ids, zero-padded so that string order is numeric order."""
    width = max(min_digits, len(str(n - 1)))
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(n)], pa.string())


# ------------------------------------------------------------------------------ catalog
@dataclasses.dataclass
class _Catalog:
    """Items in internal order (grouped by genre, series parts adjacent), with samplers' arrays."""

    table: pa.Table  # what is written: item_id, title, genre
    item_ids: pa.Array  # public id of each internal item
    genre: np.ndarray  # genre of each internal item
    next_part: np.ndarray  # internal index of the next part of the series, -1 for the last part
    cum_popularity: np.ndarray  # inclusive running sum of popularity, internal order
    genre_first: np.ndarray  # first internal item of each genre
    genre_last: np.ndarray  # last internal item of each genre
    genre_popularity: np.ndarray  # how likely each genre is among a user's tastes

    def sample_in_genre(self, genres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per entry of `genres`, by popularity within that genre (inverse CDF)."""
        first, last = self.genre_first[genres], self.genre_last[genres]
        low = np.where(first > 0, self.cum_popularity[first - 1], 0.0)
        high = self.cum_popularity[last]
        picks = np.searchsorted(self.cum_popularity, low + rng.random(len(genres)) * (high - low), side="right")
        return np.clip(picks, first, last)  # float rounding at the edges must not leave the genre


def _build_catalog(num_items: int, num_genres: int, rng: np.random.Generator) -> _Catalog:
    series_len = _series_lengths(num_items, rng)
    num_series = len(series_len)
    if num_series < num_genres:
        raise ValueError(f"num_items={num_items} makes {num_series} series, fewer than num_genres={num_genres}")
    # Deal series to genres round-robin after a shuffle, so every genre gets its share.
    series_genre = rng.permutation(num_series) % num_genres
    series_rank = rng.permutation(num_series) + 1
    series_popularity = series_rank ** -SERIES_POPULARITY_EXPONENT
    names = _series_names(num_series, rng)
    styles = rng.integers(0, len(_PART_STYLES), num_series)
    styles = np.where(series_len == 1, 0, styles).tolist()  # a standalone title is the bare name

    # Internal order: series sorted by genre, each series' parts in order.
    order = np.argsort(series_genre, kind="stable")
    item_series = np.repeat(order, series_len[order])
    starts = np.cumsum(series_len[order]) - series_len[order]
    part = np.arange(num_items) - np.repeat(starts, series_len[order]) + 1
    is_last = part == series_len[item_series]
    next_part = np.where(is_last, -1, np.arange(num_items) + 1)
    genre = series_genre[item_series]
    popularity = series_popularity[item_series] * PART_DECAY ** (part - 1)

    subtitle_adjectives = rng.integers(len(ADJECTIVES), size=num_items).tolist()
    subtitle_nouns = rng.integers(len(NOUNS), size=num_items).tolist()
    titles = [
        _PART_STYLES[styles[s]](names[s], k, f"{ADJECTIVES[a]} {NOUNS[n]}")
        for s, k, a, n in zip(item_series.tolist(), part.tolist(), subtitle_adjectives, subtitle_nouns)
    ]
    public = rng.permutation(num_items)  # ids carry no hint of series order or genre
    all_ids = _ids("i", num_items, 5)
    by_id = pa.array(np.argsort(public))
    table = pa.table(
        {
            "item_id": all_ids,
            "title": pa.array(titles).take(by_id),
            "genre": pa.array(genre_names(num_genres)).take(pa.array(genre)).take(by_id),
        }
    )
    genre_first = np.searchsorted(genre, np.arange(num_genres), side="left")
    genre_last = np.searchsorted(genre, np.arange(num_genres), side="right") - 1
    return _Catalog(
        table=table,
        item_ids=all_ids.take(pa.array(public)),
        genre=genre,
        next_part=next_part,
        cum_popularity=np.cumsum(popularity),
        genre_first=genre_first,
        genre_last=genre_last,
        genre_popularity=(np.arange(num_genres) + 1.0) ** -GENRE_POPULARITY_EXPONENT,
    )


def _series_lengths(num_items: int, rng: np.random.Generator) -> np.ndarray:
    """Parts per series, summing to exactly num_items (the last series is cut short if needed)."""
    lengths = rng.choice(np.arange(1, len(SERIES_LENGTH_PMF) + 1), size=num_items, p=SERIES_LENGTH_PMF)
    total = np.cumsum(lengths)
    num_series = int(np.searchsorted(total, num_items)) + 1
    lengths = lengths[:num_series]
    lengths[-1] -= total[num_series - 1] - num_items
    return lengths


def genre_names(num_genres: int) -> list[str]:
    """'Mystery', ..., then 'Dark Mystery', 'Cozy Mystery', ... when more genres are asked for."""
    names = [prefix + genre for prefix in GENRE_PREFIXES for genre in GENRES]
    if num_genres > len(names):
        raise ValueError(f"num_genres={num_genres}: at most {len(names)} genres have names")
    return names[:num_genres]


# Series-name patterns and how many distinct names each can make. Names are drawn without
# replacement within a pattern, and patterns cannot produce each other's strings, so names are unique.
_NAME_PATTERNS = (
    ("adjective noun", len(ADJECTIVES) * len(NOUNS), 0.45),
    ("the noun of", len(NOUNS) * len(OF_NOUNS), 0.2),
    ("possessive", len(NAMES) * len(NOUNS), 0.15),
    ("the adjective noun of", len(ADJECTIVES) * len(NOUNS) * len(OF_NOUNS), 0.2),
)


def _series_names(num_series: int, rng: np.random.Generator) -> list[str]:
    """Unique English-looking names such as 'The Glass Harbor', 'Marlow's Compass'."""
    capacity = np.array([cap for _, cap, _ in _NAME_PATTERNS])
    if num_series > capacity.sum() // 2:
        raise ValueError(f"{num_series} series exceed the title vocabulary ({capacity.sum() // 2} names)")
    counts = rng.multinomial(num_series, [w for _, _, w in _NAME_PATTERNS])
    # Keep the small patterns at most half full so names stay varied; overflow to the largest one.
    overflow = np.maximum(counts - capacity // 2, 0)
    counts = counts - overflow
    counts[-1] += overflow.sum()
    names = []
    for (pattern, cap, _), count in zip(_NAME_PATTERNS, counts):
        names += [_name(pattern, int(code)) for code in rng.choice(cap, size=count, replace=False)]
    return [names[i] for i in rng.permutation(num_series)]


def _name(pattern: str, code: int) -> str:
    """Decode a mixed-radix code into the words of a name pattern."""
    if pattern == "adjective noun":
        a, n = divmod(code, len(NOUNS))
        # The article depends on the pair, so 'Crimson Orbit' and 'The Crimson Orbit' never both exist.
        article = "The " if (a + n) % 3 == 0 else ""
        return f"{article}{ADJECTIVES[a]} {NOUNS[n]}"
    if pattern == "the noun of":
        n, o = divmod(code, len(OF_NOUNS))
        return f"The {NOUNS[n]} of {OF_NOUNS[o]}"
    if pattern == "possessive":
        p, n = divmod(code, len(NOUNS))
        return f"{NAMES[p]}'s {NOUNS[n]}"
    a, rest = divmod(code, len(NOUNS) * len(OF_NOUNS))
    n, o = divmod(rest, len(OF_NOUNS))
    return f"The {ADJECTIVES[a]} {NOUNS[n]} of {OF_NOUNS[o]}"


# How part k of a series is titled; part 1 of the first, second and fourth is the bare name.
_PART_STYLES = (
    lambda name, k, sub: name if k == 1 else f"{name} {k}: {sub}",
    lambda name, k, sub: name if k == 1 else f"{name} \u2014 Part {k}",
    lambda name, k, sub: f"{name}, Book {NUMBER_WORDS[k - 1]}",
    lambda name, k, sub: name if k == 1 else f"{name} {ROMAN[k - 1]}",
)


# ------------------------------------------------------------------------------ user logs
def _sample_lengths(
    n: int, min_len: int, max_len: int, mean_len: float | None, rng: np.random.Generator
) -> np.ndarray:
    """Log lengths in [min_len, max_len]: min_len plus a geometric tail truncated at max_len."""
    span = max_len - min_len
    target = (mean_len if mean_len is not None else min_len + span / 3) - min_len
    if span == 0 or target <= 0:
        return np.full(n, min_len, dtype=np.int64)
    q = _truncated_geometric_ratio(target, span)
    # Inverse CDF of the geometric law on {0, ..., span}: P(X >= k) is proportional to q^k - q^(span+1).
    u = rng.random(n) * (1.0 - q ** (span + 1))
    extra = np.floor(np.log1p(-u) / np.log(q)).astype(np.int64)
    return min_len + np.minimum(extra, span)


def _truncated_geometric_ratio(mean: float, span: int) -> float:
    """The ratio q whose geometric law truncated to {0..span} has this mean (found by bisection)."""
    def truncated_mean(q: float) -> float:
        return q / (1 - q) - (span + 1) * q ** (span + 1) / (1 - q ** (span + 1))

    low, high = 1e-9, 1 - 1e-9
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if truncated_mean(mid) < mean else (low, mid)
    return (low + high) / 2


def _simulate_users(
    catalog: _Catalog, user_ids: pa.Array, lengths: np.ndarray, rng: np.random.Generator
) -> pa.RecordBatch:
    """Run the Markov chains of a chunk of users; rows grouped by user, in log order."""
    items = _walk(catalog, lengths, rng)
    rows_user = np.repeat(np.arange(len(lengths)), lengths)
    return pa.RecordBatch.from_arrays(
        [user_ids.take(pa.array(rows_user)), catalog.item_ids.take(pa.array(items)), _timestamps(lengths, rng)],
        schema=INTERACTIONS_SCHEMA,
    )


def _walk(catalog: _Catalog, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Internal item indices of every user's log, concatenated user after user.

    Users are sorted longest first so that the users still active at step t are a prefix, and
    each step is a handful of numpy operations on that prefix.
    """
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    active = np.searchsorted(-sorted_len, -np.arange(sorted_len[0]), side="left")  # users with len > t
    tastes, taste_cdf = _tastes(catalog, len(lengths), rng)
    tastes, taste_cdf = tastes[order], taste_cdf[order]

    steps = np.empty((sorted_len[0], len(lengths)), dtype=np.int32)
    current = catalog.sample_in_genre(_liked_genre(tastes, taste_cdf, rng), rng)
    steps[0] = current
    for t in range(1, len(active)):
        m = active[t]
        current = current[:m]
        next_part = catalog.next_part[current]
        follow = (next_part >= 0) & (rng.random(m) < P_NEXT_PART)
        stay = rng.random(m) < P_SAME_GENRE
        genre = np.where(stay, catalog.genre[current], _liked_genre(tastes[:m], taste_cdf[:m], rng))
        current = np.where(follow, next_part, catalog.sample_in_genre(genre, rng))
        steps[t, :m] = current
    # Back to the callers' user order, then keep each user's first `length` steps.
    per_user = steps.T[np.argsort(order)]
    return per_user[np.arange(steps.shape[0]) < lengths[:, None]]


def _tastes(catalog: _Catalog, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each user's liked genres (distinct, popular genres more likely) and the CDF of their weights."""
    num_genres = len(catalog.genre_popularity)
    k = min(TASTE_GENRES, num_genres)
    # Gumbel top-k: the k largest of log-weight + Gumbel noise are a weighted sample without replacement.
    keys = np.log(catalog.genre_popularity) + rng.gumbel(size=(n, num_genres))
    liked = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    weights = rng.dirichlet(np.ones(k), size=n)
    return liked, np.cumsum(weights, axis=1)


def _liked_genre(tastes: np.ndarray, taste_cdf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One genre per user, drawn from that user's taste."""
    pick = (rng.random(len(tastes))[:, None] > taste_cdf).sum(axis=1)
    return tastes[np.arange(len(tastes)), np.minimum(pick, tastes.shape[1] - 1)]


def _timestamps(lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-user increasing unix seconds; a few consecutive interactions share a second."""
    n = int(lengths.sum())
    gaps = 1 + rng.exponential(MEAN_GAP_S, size=n).astype(np.int64)
    gaps[rng.random(n) < P_EQUAL_TIME] = 0
    first = np.cumsum(lengths) - lengths
    gaps[first] = 0
    elapsed = np.cumsum(gaps)
    start = START_TIME + rng.integers(0, START_SPREAD_S, size=len(lengths))
    return elapsed + np.repeat(start - elapsed[first], lengths)
