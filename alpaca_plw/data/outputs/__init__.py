"""Safe outputs, shared by every writing command: path safety and claims, atomic publishing,
deterministic writes."""
