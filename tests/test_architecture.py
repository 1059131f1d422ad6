"""The import rules of the package, checked on the source with ``ast``.

Every top-level package or module of ``ferrohsm/`` has a row in ``ALLOWED``: the ferrohsm packages
it may import (besides itself and the root ``__init__``, which holds only ``__version__``). An
import outside the table fails, and so does a package without a row: a new folder must be placed.
The table was derived from the imports as they are, and ``LAYER`` shows that it points inward::

    L0 domain  <-  L1 crypto  <-  L2 audit store auth control engine telemetry
      <-  L3 service config integrity  <-  L4 adapters api tls client  <-  L5 app (the composition root)
      <-  L6 entry points cli __main__

Widening a row is a design decision: make it here, in review, not by accident in a module.

Also checked: third-party packages only where they belong (``cryptography`` in crypto/ and the
development PKI, ``jwt`` in auth/); the offline verifier and the CLI's start-up need only the
standard library; the domain is pure (no I/O, clock or randomness; ids.py excepted); TagPolicy
lives in control/ and control never reads config; only app.py names concrete stores; files stay
at most 600 lines.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import NamedTuple

PKG = Path(__file__).resolve().parent.parent / "ferrohsm"
ROOT = "ferrohsm"

L2 = frozenset({"audit", "store", "auth", "control", "engine", "telemetry"})

ALLOWED: dict[str, frozenset[str]] = {
    # L0: pure data and rules
    "domain": frozenset(),
    # a bounded read of a file a setting or a flag names (no file is trusted to be small)
    "smallfile": frozenset(),
    # L1: the primitives; the only importer of cryptography.hazmat
    "crypto": frozenset({"domain"}),
    # L2: ports, stores and policy
    "audit": frozenset({"domain", "crypto"}),  # crypto: anchor.py signs checkpoints (server side)
    "store": frozenset({"domain"}),
    "auth": frozenset({"domain", "crypto", "smallfile"}),  # crypto: approver keys
    "control": frozenset({"domain", "auth", "store"}),
    "engine": frozenset({"domain", "crypto"}),
    "telemetry": frozenset(),
    # L3: the application service and the configuration it is built from
    "service": frozenset({"domain", "crypto", "audit", "store", "auth", "control", "engine"}),
    # control: TagPolicy, parsed from [policy.tags]; datadir: user names for ownership messages
    "config": frozenset({"domain", "control", "datadir", "smallfile"}),
    "datadir": frozenset({"domain"}),  # the 0700 data directory
    # start-up checks that the store, the audit log and its checkpoints agree: they read the
    # store and write to the audit log, so they sit above both (app runs them before serving)
    "integrity": frozenset({"domain", "crypto", "audit", "store", "engine"}),
    # L4: adapters
    # crypto: certs.py checks PEM pairs and OCSP signatures
    "tls": frozenset({"domain", "crypto", "smallfile"}),
    "api": frozenset({"domain", "store", "auth", "control", "telemetry", "service", "tls"}),
    "client": frozenset({"client_errors"}),  # the SDK stands alone (two files, stdlib only)
    "client_errors": frozenset(),
    # split-knowledge unsealing and rekey: shares, the custody file, the sealed gate in front
    # of the api application, the store rewrite of a rekey; backup archives and their restore
    # (config: the backup key's sources)
    "custody": frozenset({"domain", "crypto", "audit", "store", "api", "config", "smallfile"}),
    # L5: the one composition root
    "app": frozenset({"domain", "crypto", "audit", "store", "auth", "control", "engine",
                      "telemetry", "service", "config", "tls", "api", "integrity", "custody",
                      "datadir", "tlswire", "custodywire", "obswire", "clusterwire"}),
    # the metrics of the composition root (caches, audit, keys by state, zero-valued series)
    "obswire": frozenset({"domain", "crypto", "audit", "store", "auth", "service", "api",
                          "telemetry"}),
    # the custody routes of the composition root (backup, online rekey)
    "custodywire": frozenset({"domain", "config", "custody", "service", "api", "audit", "store"}),
    # the cluster half of the composition root (membership, leader, rate limits, node locks)
    "clusterwire": frozenset({"domain", "audit", "config", "control", "datadir", "integrity",
                              "store"}),
    # the TLS half of the composition root (provider choice, its audit, health and metrics)
    "tlswire": frozenset({"domain", "audit", "config", "tls", "datadir", "telemetry"}),
    # L6: entry points
    # crypto, imported lazily: `keys import` wraps key material locally (crypto/importwrap.py),
    # `approvals --signing-key` signs a vote locally
    "cli": frozenset({"domain", "audit", "auth", "telemetry", "config", "tls", "client",
                      "client_errors", "app", "custody", "integrity", "crypto", "datadir",
                      "smallfile"}),
    "__main__": frozenset({"cli"}),
}

LAYER: dict[str, int] = {
    "domain": 0, "smallfile": 0, "crypto": 1, **dict.fromkeys(L2, 2), "service": 3, "config": 3, "datadir": 3, "integrity": 3,
    "tls": 4, "api": 4, "client": 4, "client_errors": 4, "custody": 4, "app": 5, "clusterwire": 5, "tlswire": 5, "custodywire": 5, "obswire": 5, "cli": 6, "__main__": 6,
}

# Third-party packages and the modules that may import them (prefixes of dotted names).
THIRD_PARTY: dict[str, tuple[str, ...]] = {
    # tls: x509 and OCSP (hazmat only in tls.acme, which makes TLS keys and certificates)
    "cryptography": ("ferrohsm.crypto.", "ferrohsm.tls."),
    "OpenSSL": ("ferrohsm.tls.pyossl",),  # OCSP stapling only, imported when configured
    "jwt": ("ferrohsm.auth.",),
    # loaded lazily, only when PostgreSQL is configured: the store, the audit sink, cluster
    # coordination
    "psycopg": ("ferrohsm.store.pgdb", "ferrohsm.store.pg_shared", "ferrohsm.audit.pgsink"),
    # the span exporter child process only (started when OTLP export is set): the serving
    # process never imports the SDK
    "opentelemetry": ("ferrohsm.telemetry.otlpexport", "ferrohsm.telemetry.otlphttp"),
    # the CA bundle requests trusts, read by the exporter child's transport (otlphttp.py) so
    # that it trusts what the SDK's own transport would
    "certifi": ("ferrohsm.telemetry.otlphttp",),
    # the SDK's transport's own URL handling, so that the target sent is the one it would send
    "requests": ("ferrohsm.telemetry.otlphttp",),
    "urllib3": ("ferrohsm.telemetry.otlphttp",),
}

CONCRETE_STORES = frozenset({
    "ferrohsm.store.filesystem", "ferrohsm.store.sqlite", "ferrohsm.store.memory",
    "ferrohsm.store.memory_approvals", "ferrohsm.store.sqlite_approvals", "ferrohsm.store.remote",
    "ferrohsm.store.postgres", "ferrohsm.store.postgres_approvals",
    "ferrohsm.store.postgres_revocations",
    "ferrohsm.store.importjobs_files",
    "ferrohsm.store.nodelock", "ferrohsm.store.sqlite_usage", "ferrohsm.store.pg_shared",
})

# What a pure domain module may import from the standard library: no os, time, random, secrets,
# uuid, socket, threading, logging, sqlite3, subprocess...
PURE_STDLIB = frozenset({
    "__future__", "abc", "base64", "binascii", "collections", "dataclasses", "datetime", "enum",
    "functools", "hashlib", "hmac", "ipaddress", "itertools", "json", "math", "operator", "re",
    "string", "struct", "typing", "unicodedata",
})
CLOCK_METHODS = frozenset({"now", "utcnow", "today"})  # datetime.now(), date.today(), ...
IMPURE_BUILTINS = frozenset({"open", "print", "input", "__import__", "eval", "exec", "compile",
                             "breakpoint"})
IMPURE_BY_DESIGN = {"ids.py": "mints identifiers: UUIDv7 reads the clock and os.urandom"}

OFFLINE_TOOLS = ("ferrohsm.audit.verify", "ferrohsm.audit.report", "ferrohsm.audit.votecheck")


# ---- reading imports ----------------------------------------------------------------------------

class Imports(NamedTuple):
    internal: frozenset[str]  # ferrohsm modules, resolved to the module a name comes from
    external: frozenset[str]  # top-level names of everything else (standard library or not)


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(name: str) -> Path | None:
    """The source of ferrohsm module ``name``; None when ``name`` is not a module."""
    base = PKG.parent.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def owner(path: Path) -> str:
    """The top-level package or module a source file belongs to (its row in ALLOWED)."""
    return path.relative_to(PKG).parts[0].removesuffix(".py")


def top(name: str) -> str:
    """The top-level part of a ferrohsm module name; "" for the root package itself."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _nodes(node: ast.AST, lazy: bool) -> Iterator[ast.AST]:
    """Every node below ``node``; with ``lazy=False`` only what runs at import time (function
    bodies and ``if TYPE_CHECKING:`` blocks are left out)."""
    for child in ast.iter_child_nodes(node):
        if not lazy and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if not lazy and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        yield child
        yield from _nodes(child, lazy)


def _from_base(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module named by ``from <base> import ...`` (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _is_ferrohsm(name: str) -> bool:
    return name == ROOT or name.startswith(ROOT + ".")


@cache
def imports_of(path: Path, lazy: bool = True) -> Imports:
    """What ``path`` imports; ``lazy`` includes imports inside functions."""
    internal: set[str] = set()
    external: set[str] = set()
    for node in _nodes(ast.parse(path.read_text(), str(path)), lazy):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            internal |= {n for n in names if _is_ferrohsm(n)}
            external |= {n.split(".")[0] for n in names if not _is_ferrohsm(n)}
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(path, node)
            if not _is_ferrohsm(base):
                external.add(base.split(".")[0])
                continue
            for alias in node.names:  # a submodule, or a name defined in ``base``
                full = f"{base}.{alias.name}"
                internal.add(full if module_file(full) else base)
    return Imports(frozenset(internal), frozenset(external))


def closure(start: str, lazy: bool) -> set[str]:
    """Every ferrohsm module that importing ``start`` can load, parent packages included."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        source = module_file(name)
        assert source is not None, f"{name} is imported but is not a module"
        todo += imports_of(source, lazy).internal
    return seen


def third_party(modules: set[str], lazy: bool) -> dict[str, set[str]]:
    """Non-standard-library imports of ``modules``: {module: names}."""
    found: dict[str, set[str]] = {}
    for name in modules:
        source = module_file(name)
        assert source is not None
        outside = set(imports_of(source, lazy).external) - sys.stdlib_module_names
        if outside:
            found[name] = outside
    return found


# ---- the table ----------------------------------------------------------------------------------

def test_every_package_has_a_row() -> None:
    present = {entry.name.removesuffix(".py") for entry in PKG.iterdir()
               if (entry.suffix == ".py" and entry.name != "__init__.py")
               or (entry.is_dir() and any(entry.rglob("*.py")))}
    assert not present - set(ALLOWED), f"place these in ALLOWED: {sorted(present - set(ALLOWED))}"
    assert not set(ALLOWED) - present, f"no longer exist: {sorted(set(ALLOWED) - present)}"
    assert set(LAYER) == set(ALLOWED)


def test_imports_stay_inside_the_table() -> None:
    bad: list[str] = []
    for path in sources():
        if path == PKG / "__init__.py":
            continue
        mine = owner(path)
        for name in sorted(imports_of(path).internal):
            if top(name) not in {"", mine} and top(name) not in ALLOWED.get(mine, ()):
                bad.append(f"{module_name(path)} imports {name} ({mine} -> {top(name)})")
    assert not bad, "imports outside the ALLOWED table:\n" + "\n".join(bad)


def test_the_table_points_inward() -> None:
    for package, allowed in ALLOWED.items():
        outward = {other for other in allowed if LAYER[other] > LAYER[package]}
        assert not outward, f"{package} (L{LAYER[package]}) may import outer {outward}"
    order: list[str] = []  # a topological order exists, so same-layer rows form no cycle
    remaining = dict(ALLOWED)
    while remaining:
        ready = sorted(p for p, allowed in remaining.items() if allowed <= set(order))
        assert ready, f"the table has a cycle among {sorted(remaining)}"
        order += ready
        for package in ready:
            del remaining[package]


def test_the_root_package_stays_a_leaf() -> None:
    imports = imports_of(PKG / "__init__.py")
    assert not imports.internal and imports.external <= {"__future__"}


def test_third_party_packages_only_where_they_belong() -> None:
    bad: list[str] = []
    for path in sources():
        name = module_name(path)
        for package in sorted(imports_of(path).external - sys.stdlib_module_names):
            allowed = THIRD_PARTY.get(package, ())
            if not any(name.startswith(prefix) for prefix in allowed):
                bad.append(f"{name} imports {package}")
    assert not bad, "\n".join(bad)


def test_only_crypto_and_the_dev_pki_touch_hazmat() -> None:
    # tls/acme/ too: like the dev PKI, it makes TLS keys and certificates (ACME account key,
    # CSRs, challenge certificates), never the HSM's own key material
    for path in sources():
        if "hazmat" in path.read_text():
            assert (owner(path) == "crypto" or path == PKG / "tls" / "devpki.py"
                    or PKG / "tls" / "acme" in path.parents), path


def test_only_app_names_concrete_stores() -> None:
    assert all(module_file(name) for name in CONCRETE_STORES)
    for path in sources():
        if owner(path) == "store":
            continue
        used = imports_of(path).internal & CONCRETE_STORES
        assert not used or module_name(path) in ("ferrohsm.app", "ferrohsm.clusterwire"), \
            f"{path} imports {used}"  # the composition root and its cluster half


def test_files_stay_small() -> None:
    for path in sources():
        assert len(path.read_text().splitlines()) <= 600, f"{path} is over 600 lines: split it"


# ---- the offline verifier -----------------------------------------------------------------------

def test_the_offline_verifier_needs_only_the_standard_library() -> None:
    """Everything ``audit verify`` and ``audit report`` can load, even lazily, is stdlib-only."""
    for tool in OFFLINE_TOOLS:
        modules = closure(tool, lazy=True)
        assert not {m for m in modules if top(m) == "crypto"}, f"{tool} reaches crypto/"
        assert not third_party(modules, lazy=True), f"{tool}: {third_party(modules, True)}"
    assert "ferrohsm.audit.ed25519" in closure("ferrohsm.audit.verify", lazy=True)


def test_the_cli_starts_with_the_standard_library_only() -> None:
    """``python3 -m ferrohsm audit verify`` imports the command tree before dispatching: none of
    it may load a third-party package at import time (commands import theirs when they run)."""
    modules = closure("ferrohsm.__main__", lazy=False)  # the launcher holds SIGHUP first,
    modules |= closure("ferrohsm.cli.main", lazy=False)  # then imports the command tree
    assert "ferrohsm.cli.earlyhup" in modules
    assert not third_party(modules, lazy=False), third_party(modules, lazy=False)


# ---- the domain ---------------------------------------------------------------------------------

def domain_sources() -> list[Path]:
    return sorted((PKG / "domain").rglob("*.py"))


def test_domain_imports_only_domain_and_the_standard_library() -> None:
    for path in domain_sources():
        text = path.read_text()
        assert "cryptography" not in text and "import jwt" not in text, path
        imports = imports_of(path)
        assert {top(n) for n in imports.internal} <= {"", "domain"}, path
        assert imports.external <= sys.stdlib_module_names, path


def impurities(path: Path) -> list[str]:
    """Imports outside PURE_STDLIB and clock or I/O calls in one source file."""
    imports = imports_of(path)
    found = [f"imports {name}" for name in sorted(imports.external - PURE_STDLIB)]
    found += [f"imports {name}" for name in sorted(imports.internal) if top(name) != "domain"]
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Attribute) and node.func.attr in CLOCK_METHODS:
            found.append(f"line {node.lineno}: calls .{node.func.attr}()")
        if isinstance(node.func, ast.Name) and node.func.id in IMPURE_BUILTINS:
            found.append(f"line {node.lineno}: calls {node.func.id}()")
    return found


def test_the_domain_is_pure() -> None:
    """No I/O, clock or randomness: times and randomness are passed in by the caller."""
    checked = [p for p in domain_sources() if p.name not in IMPURE_BY_DESIGN]
    assert PKG / "domain" / "approval.py" in checked  # the approval state machine above all
    for path in checked:
        assert not impurities(path), f"{path.name}: {impurities(path)}"


def test_the_purity_check_bites(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nimport time\nfrom datetime import date, datetime\n"
                     "from ferrohsm.store import keystore\n"
                     "A = datetime.now()\nB = date.today()\nC = open('x')\n")
    assert impurities(probe) == ["imports os", "imports time", "imports ferrohsm.store.keystore",
                                 "line 5: calls .now()", "line 6: calls .today()",
                                 "line 7: calls open()"]


# ---- control and config -------------------------------------------------------------------------

def test_tag_policy_lives_in_control_which_never_reads_config() -> None:
    for path in sorted((PKG / "control").rglob("*.py")):
        assert f"{ROOT}.config" not in imports_of(path).internal, path
    def classes(path: Path) -> set[str]:
        return {n.name for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.ClassDef)}
    assert "TagPolicy" in classes(PKG / "control" / "policy.py")
    assert "TagPolicy" not in classes(PKG / "config" / "__init__.py")
