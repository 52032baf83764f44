"""Model backends: local weights (hf), OpenAI-compatible servers (openai/)."""
