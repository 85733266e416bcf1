"""Evaluation helpers that do not depend on the compare pipeline (pure functions on arrays)."""
