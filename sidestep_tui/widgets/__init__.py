"""Reusable widgets (they may carry DEFAULT_CSS)."""
