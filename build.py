#!/usr/bin/env python3
"""Build dist/ferrohsm: the whole service as ONE executable zip app (shiv).

The result runs on any host with python3 >= 3.11 and nothing else: the runtime dependencies
(cryptography, pyjwt — abi3 wheels) travel inside the zip. Builds are reproducible (shiv
--reproducible, SOURCE_DATE_EPOCH pinned), so two builds of one commit are byte-identical.

The PostgreSQL driver travels too (the ``postgres`` extra: psycopg 3's pure-Python build and
typing-extensions, ~1 MiB unpacked). It is imported only when ``key_store = "postgres"`` and then
needs the host's libpq (Debian: libpq5); every other setup never loads it. ``--without-postgres``
builds the smaller zip app without it.

Usage: python3 build.py [--out dist/ferrohsm] [--without-postgres]

The manual page is written beside it (dist/ferrohsm.1), the same page `ferrohsm man` prints.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SHIV = "shiv==1.0.8"
TOOLS = ROOT / "build" / "tools"
LAUNCHER = ROOT / "deploy" / "zipapp_main.py"
# psycopg's own dependency on Python < 3.13, pinned here so two builds resolve the same files.
POSTGRES_PINS = ["typing-extensions==4.16.0"]


def shiv_env() -> dict[str, str]:
    """An environment where `python -m shiv` works, installing shiv into build/tools if needed."""
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", PYTHONHASHSEED="0")
    try:
        import shiv  # noqa: F401
        return env
    except ImportError:
        pass
    if not (TOOLS / "shiv").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "--target", str(TOOLS), SHIV], check=True)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TOOLS), env.get("PYTHONPATH")]))
    return env


def build(out: Path, postgres: bool = True) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    # setuptools builds the package in build/lib and skips a file whose copy there looks newer:
    # a checkout copied with fresh times (cp -r) shipped the previous build's code, and a module
    # deleted from the source lived on in it. Always from the sources, then.
    for stale in (ROOT / "build" / "lib", *ROOT.glob("build/bdist.*")):
        shutil.rmtree(stale, ignore_errors=True)
    packages = [f"{ROOT}[postgres]", *POSTGRES_PINS] if postgres else [str(ROOT)]
    cmd = [sys.executable, "-m", "shiv", "--reproducible", "--compressed",
           "--python", "/usr/bin/env python3", "--entry-point", "ferrohsm.__main__:run",
           "--output-file", str(out), "--no-cache", "--quiet", *packages]
    subprocess.run(cmd, check=True, cwd=ROOT, env=shiv_env())
    install_launcher(out)
    out.chmod(0o755)
    write_manpage(out)
    return out


def write_manpage(out: Path) -> Path:
    """dist/ferrohsm.1 beside the executable, for packagers (man1/): the very page `ferrohsm
    man` prints, dated by its version (the zip app's pinned SOURCE_DATE_EPOCH is no date: it
    dated the page 2023-11-14). Generated from this source tree (the CLI's start-up needs only
    the standard library)."""
    page = out.with_name(out.name + ".1")
    env = {k: v for k, v in shiv_env().items() if k != "SOURCE_DATE_EPOCH"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-m", "ferrohsm", "man"], check=True, cwd=ROOT,
                          env=env, capture_output=True)
    page.write_bytes(done.stdout)
    return page


def install_launcher(out: Path) -> None:
    """Put deploy/zipapp_main.py in place of shiv's __main__.py (it picks a writable extraction
    root and removes older builds' extractions, then runs shiv's bootstrap). Every other entry
    is copied with its own ZipInfo, so the build stays reproducible."""
    data = out.read_bytes()
    shebang = data[:data.index(b"\n") + 1]
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(out) as src, tmp.open("wb") as fd:
        fd.write(shebang)
        with zipfile.ZipFile(fd, "w") as dst:
            for info in src.infolist():
                body = LAUNCHER.read_bytes() if info.filename == "__main__.py" \
                    else src.read(info)
                dst.writestr(info, body)
    tmp.replace(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "dist" / "ferrohsm"))
    parser.add_argument("--without-postgres", action="store_true",
                        help="leave the PostgreSQL driver (psycopg) out of the zip app")
    args = parser.parse_args()
    out = build(Path(args.out), postgres=not args.without_postgres)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"built {out} ({out.stat().st_size // 1024} KiB, sha256 {digest[:16]}…)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
