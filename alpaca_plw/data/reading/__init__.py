"""Reading records: sources (files, `save_to_disk` folders, the hub), records and their
validation, the dataset kind, duplicate JSON keys, size limits, and reading in batches."""
