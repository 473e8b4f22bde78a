"""The run folder: its record (`run.json`, the marker, `--resume` and `--force`), the step log
`log.jsonl`, and the model card."""
