"""The local provider and its experiments: fine-tuning, cheats, serving changes, tiny models,
calibration worlds, the demo. Never imported by the proof path."""
