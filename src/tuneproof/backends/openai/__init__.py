"""The OpenAI-compatible HTTP backend: client, requests (SDK retries), journal, chat scoring,
generator."""
