"""Item tokens: one vocabulary entry per catalog item, `<item:ITEM_ID>`, for `item_tokens=true` models.

Such a model reads every history item as its token followed by its title (an ID embedding beside
the text, the collaborative signal ID-based recommenders such as SASRec live on) and writes the
next item as that one token, so ranking the catalog is one softmax over the item tokens rather than
a beam search over titles. The tokens are added to the tokenizer as special tokens, so a title that
happens to read `<item:X>` stays text (titles are encoded with split_special_tokens) and the
mapping travels with every checkpoint's tokenizer, keyed by item id rather than catalog position.
"""
from __future__ import annotations

import weakref
from collections.abc import Iterable

PREFIX, SUFFIX = "<item:", ">"

_maps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def item_token(item_id: str) -> str:
    return f"{PREFIX}{item_id}{SUFFIX}"


def add_item_tokens(tokenizer, item_ids: Iterable[str]) -> int:
    """Add one special token per item id (in the given order); returns how many were added."""
    item_ids = [str(item) for item in item_ids]
    bad = [item for item in item_ids if not item or SUFFIX in item]
    if bad:
        raise ValueError(f"item tokens: item ids must be non-empty and contain no {SUFFIX!r}; got {bad[:5]}")
    tokens = [item_token(item) for item in item_ids]
    added = tokenizer.add_tokens(tokens, special_tokens=True)
    _maps.pop(tokenizer, None)
    return added


def item_token_ids(tokenizer) -> dict[str, int]:
    """item id -> token id for the tokenizer's item tokens; empty for a tokenizer without them.
    Cached per tokenizer object (reading the added vocabulary of 60k tokens takes ~0.1 s)."""
    cached = _maps.get(tokenizer)
    if cached is None:
        cached = {token[len(PREFIX):-len(SUFFIX)]: index for token, index in tokenizer.get_added_vocab().items()
                  if token.startswith(PREFIX) and token.endswith(SUFFIX)}
        _maps[tokenizer] = cached
    return cached


def catalog_token_ids(tokenizer, catalog_item_ids: list[str]) -> list[int]:
    """The token of each catalog item, in catalog order; every item must have one."""
    tokens = item_token_ids(tokenizer)
    missing = [item for item in catalog_item_ids if item not in tokens]
    if missing:
        raise ValueError(f"{len(missing)} catalog items have no item token in this model's tokenizer "
                         f"(e.g. {missing[:5]}): it was trained on another catalog; retrain with this one")
    return [tokens[item] for item in catalog_item_ids]
