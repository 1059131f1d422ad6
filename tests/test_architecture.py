"""Layers point inward: L0 domain ← L1 crypto ← L2 ports/policy ← L3 adapters."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "ferrohsm"
L0 = {"errors", "model", "lifecycle", "ids"}
ADAPTERS = {"api", "cli", "tls", "app", "client", "logs", "__main__"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PKG.parent).with_suffix("").parts)


def imports_of(path: Path) -> set[str]:
    """Absolute ferrohsm.* names imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" \
        else module_name(path).removesuffix(".__init__")
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found |= {f"{prefix}.{a.name}" for a in node.names}
    return {n for n in found if n == "ferrohsm" or n.startswith("ferrohsm.")}


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_domain_imports_only_domain_and_stdlib() -> None:
    for path in sources():
        if top(module_name(path)) in L0:
            text = path.read_text()
            assert "cryptography" not in text and "import jwt" not in text, path
            bad = {n for n in imports_of(path) if top(n) not in L0 and n != "ferrohsm"}
            assert not bad, f"{path.name} imports {bad}"


def test_inner_layers_never_import_adapters() -> None:
    for path in sources():
        if top(module_name(path)) in ADAPTERS:
            continue
        bad = {n for n in imports_of(path) if top(n) in ADAPTERS}
        assert not bad, f"{module_name(path)} imports adapter modules {bad}"


def test_only_crypto_touches_hazmat() -> None:
    for path in sources():
        if "hazmat" in path.read_text():
            assert top(module_name(path)) in {"crypto", "tls"}, path


def test_only_app_names_concrete_stores() -> None:
    concrete = {"ferrohsm.store.filesystem", "ferrohsm.store.sqlite", "ferrohsm.store.memory"}
    for path in sources():
        if top(module_name(path)) == "store":
            continue
        used = imports_of(path) & concrete
        assert not used or module_name(path) == "ferrohsm.app", f"{path} imports {used}"


def test_files_stay_small() -> None:
    for path in sources():
        assert len(path.read_text().splitlines()) <= 600, f"{path} is over 600 lines: split it"
