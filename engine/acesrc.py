"""Where the ``acestep`` package comes from when a checkpoint's remote code needs it (stdlib only).

Newer official checkpoint folders ship thin ``modeling_*.py`` / ``configuration_*.py`` stubs that import
``acestep.models.common.*`` (XL: ``acestep.models.xl_*``), so ACE-Step 1.5's source must be importable
when the model loads. Candidates, in order: ``$ACESTEP_SRC`` (a folder containing the ``acestep``
package), an ``ACE-Step-1.5`` checkout beside the checkpoint root (or containing it, ACE-Step's own
layout), an installed ``acestep`` package. A candidate counts only if every ``acestep.*`` module the
folder's code imports exists under it; nothing is imported or executed to find out (``ast`` + files).
The loader puts the chosen root on ``sys.path``; the Models screen shows the same choice.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "acestep"
ENV_VAR = "ACESTEP_SRC"
CHECKOUT_NAME = "ACE-Step-1.5"


class AceSourceError(ValueError):
    """No candidate provides the ``acestep`` modules a checkpoint's code imports (one-line message)."""


@dataclass(frozen=True)
class AceSource:
    root: str  # the folder that contains the ``acestep`` package (what goes on sys.path)
    how: str  # "$ACESTEP_SRC", "ACE-Step-1.5 checkout" or "installed package"

    def describe(self) -> str:
        return f"{self.how}: {self.root}"


def needed_modules(model_dir: str | os.PathLike[str]) -> list[str]:
    """Every ``acestep``/``acestep.*`` module imported by the folder's top-level ``.py`` files, sorted."""
    found: set[str] = set()
    for path in sorted(Path(model_dir).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
            continue  # transformers reports a broken code file itself, naming it
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found.update(n for n in names if n == PACKAGE or n.startswith(PACKAGE + "."))
    return sorted(found)


def _module_exists(search_dirs: list[Path], parts: list[str]) -> bool:
    """``parts`` (below the top package) is a module or package file under one of ``search_dirs``."""
    if not parts:
        return True
    for base in search_dirs:
        folder = base.joinpath(*parts[:-1])
        if not all((base.joinpath(*parts[: i + 1]) / "__init__.py").is_file() for i in range(len(parts) - 1)):
            continue
        if (folder / f"{parts[-1]}.py").is_file() or (folder / parts[-1] / "__init__.py").is_file():
            return True
    return False


def missing_module(root: str | os.PathLike[str], modules: list[str]) -> str | None:
    """The first of ``modules`` that ``<root>/acestep`` does not provide, or None when it provides all."""
    package = Path(root) / PACKAGE
    if not (package / "__init__.py").is_file():
        return modules[0] if modules else PACKAGE
    for name in modules:
        if not _module_exists([package], name.split(".")[1:]):
            return name
    return None


def _installed_root(modules: list[str]) -> tuple[str | None, str | None]:
    """(root of an importable ``acestep``, first module it lacks); executes nothing of the package."""
    if PACKAGE in sys.modules:
        origin = getattr(sys.modules[PACKAGE], "__file__", None)
        locations = list(getattr(sys.modules[PACKAGE], "__path__", []) or [])
    else:
        try:
            spec = importlib.util.find_spec(PACKAGE)  # top level: a path search, runs no package code
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            return None, None
        origin = spec.origin
        locations = list(spec.submodule_search_locations or [])
    if not locations:
        return None, None
    root = str(Path(origin).parent.parent) if origin else str(Path(locations[0]).parent)
    for name in modules:
        if not _module_exists([Path(loc) for loc in locations], name.split(".")[1:]):
            return root, name
    return root, None


def candidates(model_dir: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> list[AceSource]:
    """The folder candidates in resolution order (existence not checked): env var, then checkouts."""
    env = os.environ if env is None else env
    found: list[AceSource] = []
    if env.get(ENV_VAR, "").strip():
        found.append(AceSource(str(Path(env[ENV_VAR].strip()).expanduser()), f"${ENV_VAR}"))
    checkpoint_root = Path(model_dir).expanduser().absolute().parent
    for checkout in (checkpoint_root.parent / CHECKOUT_NAME, checkpoint_root.parent):
        if checkout.name == CHECKOUT_NAME and all(str(checkout) != c.root for c in found):
            found.append(AceSource(str(checkout), f"{CHECKOUT_NAME} checkout"))
    return found


def resolve(model_dir: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> AceSource | None:
    """The source the folder's code will import ``acestep`` from; None when its code does not need it.

    Raises ``AceSourceError`` (one line: the missing module and the three fixes) when no candidate has
    every module the code imports."""
    modules = needed_modules(model_dir)
    if not modules:
        return None
    rejected: list[str] = []
    for source in candidates(model_dir, env):
        lacking = missing_module(source.root, modules)
        if lacking is None:
            return source
        rejected.append(f"{source.how} {source.root} lacks {lacking}")
    root, lacking = _installed_root(modules)
    if root is not None and lacking is None:
        return AceSource(root, "installed package")
    if root is not None:
        rejected.append(f"installed package {root} lacks {lacking}")
    first_missing = modules[0] if not rejected else rejected[0].rsplit(" lacks ", 1)[1]
    tried = f" (tried: {'; '.join(rejected)})" if rejected else ""
    checkpoint_root = Path(model_dir).expanduser().absolute().parent
    raise AceSourceError(
        f"{Path(model_dir).name}'s model code imports {first_missing}, which no ACE-Step source provides{tried}; "
        f"fix: set ${ENV_VAR} to an ACE-Step-1.5 checkout (the folder containing acestep/), "
        f"or put the checkout at {checkpoint_root.parent / CHECKOUT_NAME}, "
        f"or install it (pip install -e <ACE-Step-1.5 checkout>)"
    )


def describe(model_dir: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> str | None:
    """One line for the UI: which acestep source the folder will use, the error, or None if not needed."""
    try:
        source = resolve(model_dir, env)
    except AceSourceError as exc:
        return f"missing: {exc}"
    return None if source is None else source.describe()
