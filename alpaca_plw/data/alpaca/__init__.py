"""The Alpaca path: the Stanford Alpaca prompt templates, the prompt/completion swap, the
short-completion builders (in memory and streamed) and the per-token weights of Alpaca records."""
