"""The weights folder on disk: its Arrow store, several folders read as one (shards), the
batch-by-batch writer, and `inspect`."""
