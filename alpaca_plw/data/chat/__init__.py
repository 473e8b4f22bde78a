"""The chat path: conversations (multi-turn records), their chat-template rendering and markup,
the token roles, statistics, builders and per-token weights of conversations."""
