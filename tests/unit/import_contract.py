"""The import rules as ``pyproject.toml`` declares them for import-linter (``[tool.importlinter]``), read
once so the hygiene tests check the very lists ``lint-imports`` enforces: the heavy packages, the
engine's sub-packages and its top-level contract modules."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def contracts() -> dict[str, dict[str, Any]]:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return {c["id"]: c for c in tomllib.load(fh)["tool"]["importlinter"]["contracts"]}


CONTRACTS = contracts()
HEAVY: tuple[str, ...] = tuple(CONTRACTS["ui-light"]["forbidden_modules"])
"""The training stack: never in the UI process, never under the contract modules."""
ENGINE_SUBPACKAGES: tuple[str, ...] = tuple(CONTRACTS["ui-contract-only"]["forbidden_modules"])
"""The torch side of ``engine``: the UI reaches it only through the spawn target and the CLI dispatch."""
CONTRACT_MODULES: tuple[str, ...] = tuple(CONTRACTS["contract-stdlib"]["source_modules"])
"""``engine``'s top-level, stdlib-only modules: all the UI may import."""
UI_PACKAGES: tuple[str, ...] = tuple(CONTRACTS["engine-no-ui"]["forbidden_modules"])
"""What the engine never imports (the UI toolkit and the UI package)."""
