"""Column contracts between readers and the prepare stage.

Interactions (a Ray Dataset):
  user_id   string  the user, as in the source
  item_id   string  the item, as in the source; always present in the catalog
  timestamp int64   time of the interaction; sources that only give order use the position
  order     int64   a key increasing with the row's place in the source, to keep ties stable

Catalog (a pyarrow Table, small enough for one process: even ml-25m has 62k titles):
  item_id   string  unique
  title     string  cleaned (HTML entities unescaped, whitespace folded), unique, non-empty
  ...               optional attribute columns (genres, categories), strings
"""
import pyarrow as pa

INTERACTION_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()), ("order", pa.int64())]
)

# Reject reasons shared by every reader, so stats.json reads the same whatever the source.
WRONG_FIELD_COUNT = "wrong field count"
BAD_ID = "bad id"
BAD_TIMESTAMP = "bad timestamp"
MALFORMED_RECORD = "malformed record"
ITEM_NOT_IN_CATALOG = "item missing from the catalog"
EMPTY_TITLE = "empty title"
DUPLICATE_CATALOG_ID = "duplicate catalog id"
