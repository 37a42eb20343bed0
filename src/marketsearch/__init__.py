"""marketsearch: listings classification and search."""
import os

__version__ = "0.1.0"

# Arrow's default mimalloc pool keeps what reading one shard's parquet after another freed:
# a stage walking 49 shards grew ~40 MB doing only that, the system allocator not at all
# (make bench-scale). Set before anything imports pyarrow; the environment may override it.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
