"""Verification: queries built from a key, the model's answers, the tests and the verdict."""
