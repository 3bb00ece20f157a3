"""Judges: reward functions that score one agent episode as ``(raw_reward, is_success)``."""
