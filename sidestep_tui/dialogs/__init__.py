"""Modal dialogs (reusable, so their CSS lives in DEFAULT_CSS)."""
