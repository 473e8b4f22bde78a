"""Checkpoints: saving and loading them and the final model, their folders (latest, complete,
rotation), the sharded trainer state, streamed safetensors shards, and the legacy layout."""
