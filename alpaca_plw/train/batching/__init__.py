"""From a weights dataset to micro-batches on the device: the data order and padded collation,
packing, the per-token columns read in place, the positions that reach the head, the feeder."""
