"""Unit tests (a package, so basenames may repeat across tests/ folders)."""
