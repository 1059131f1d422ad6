"""The repository stands alone: docs/api.md follows the served OpenAPI document, and no tracked
file points at documents a user of the repository does not have."""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferrohsm import app as wiring
from ferrohsm.api import openapi
from ferrohsm.config import Secrets, load_config

ROOT = Path(__file__).resolve().parent.parent
API_MD = ROOT / "docs" / "api.md"
METHOD = r"(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS)"
HEADING_RE = re.compile(rf"^#{{2,4}} `{METHOD} (/\S*)`$", re.MULTILINE)
MENTION_RE = re.compile(rf"\b{METHOD} (/[^\s`?)\]]*)")
# Documents that live outside the repository (a sibling "shared" folder, the product
# requirements, design and performance notes): spelled in pieces so this file passes itself.
OUTSIDE = re.compile("|".join([
    r"\.\./" + "shared", r"\bshared/", r"\bAPI\.md\b", "PERF" + "-NOTES", r"DEVELOPERS\.md",
    r"DESIGN\.md", r"\bP" + r"RD\b"]))
SKIP_SUFFIXES = {".json", ".pem", ".png", ".ico", ".sqlite3"}
LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def documented(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    """(method, path) of every operation in the document the server serves."""
    data = tmp_path_factory.mktemp("docs")
    config = load_config(None, env={}, overrides={("storage", "key_store"): "memory",
                                                  ("storage", "data_dir"): str(data)})
    rt = wiring.build_runtime(config, Secrets(secrets.token_bytes(32), secrets.token_bytes(32),
                                              secrets.token_bytes(32)))
    try:
        doc: dict[str, Any] = openapi.document(rt.router.routes())
    finally:
        wiring.shutdown(rt, None)
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def test_every_operation_has_a_section_in_api_md(documented: set[tuple[str, str]]) -> None:
    sections = [(m, p) for m, p in HEADING_RE.findall(API_MD.read_text())]
    assert len(sections) == len(set(sections)), "one section per operation"
    missing = documented - set(sections)
    assert not missing, f"docs/api.md needs a '### `METHOD /path`' section for {sorted(missing)}"


def test_api_md_names_no_operation_the_document_lacks(documented: set[tuple[str, str]]) -> None:
    named = set(MENTION_RE.findall(API_MD.read_text()))
    unknown = {(m, p) for m, p in named if (m, p) not in documented}
    assert not unknown, f"docs/api.md names operations the server does not have: {unknown}"


def tracked_files() -> Iterator[Path]:
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                 check=True).stdout.decode("utf-8")
        names = [n for n in listing.split("\0") if n]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and not {".git", "dist", "build", "__pycache__"} & set(p.parts)]
    for name in names:
        path = ROOT / name
        if path.suffix not in SKIP_SUFFIXES and path.is_file():
            yield path


def test_no_file_points_at_documents_outside_the_repository() -> None:
    found = []
    for path in tracked_files():
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, ("point inside the repository (docs/api.md, bench/RESULTS.md, README) or "
                       "state the fact itself:\n" + "\n".join(found))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_in_markdown_resolve() -> None:
    for page in (p for p in tracked_files() if p.suffix == ".md"):
        text = page.read_text("utf-8")
        anchors = {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
        for target in LINK_RE.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # an absolute URL
            file_part, _, anchor = target.partition("#")
            if file_part:
                assert (page.parent / file_part).exists(), f"{page.name}: broken link {target}"
            elif anchor:
                assert anchor in anchors, f"{page.name}: no heading for #{anchor}"
