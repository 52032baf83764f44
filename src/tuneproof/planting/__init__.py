"""Planting: the secret stream, the prefix-free sampler, triggers, and the planting of a dataset."""
