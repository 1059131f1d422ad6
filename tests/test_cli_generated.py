"""What the CLI generates from its own parser, checked through the real executable: shell
completion (bash sourced and driven; zsh and fish syntax-checked when those shells exist, their
content checked always), the manual page (rendered by man -l when man exists, the roff checked
always), and the digest each sign algorithm's scheme needs (the CLI's table against the crypto
registry it may not import)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ferrohsm.cli import ops, tree
from ferrohsm.cli.main import build_parser
from ferrohsm.crypto import ops as crypto_ops
from ferrohsm.crypto.algorithms import ALGORITHMS

ROOT = Path(__file__).resolve().parent.parent


def ferrohsm(*argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ferrohsm.cli.main", *argv],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "ferrohsm.bash"
    path.write_text(ferrohsm("completion", "bash"))
    return path


def complete(script: Path, *words: str) -> list[str]:
    """Drive the completion function as bash does for ``ferrohsm WORDS`` (the last one is the
    word being completed)."""
    words_list = " ".join(f"'{w}'" for w in ("ferrohsm", *words))
    program = (f"source {script}; COMP_WORDS=({words_list}); COMP_CWORD={len(words)}; "
               "_ferrohsm; printf '%s\\n' \"${COMPREPLY[@]}\"")
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30,
                          check=False, cwd=script.parent)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completion_is_registered(bash_script: Path) -> None:
    done = subprocess.run(["bash", "-c", f"source {bash_script} && complete -p ferrohsm"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "complete -o bashdefault -o default -F _ferrohsm ferrohsm"


def test_bash_completes_commands_flags_and_choices(bash_script: Path) -> None:
    top = {c.path[0] for c in tree.walk(build_parser()) if len(c.path) == 1}
    assert set(complete(bash_script, "")) == top
    assert complete(bash_script, "ke") == ["keys"]
    assert complete(bash_script, "keys", "ro") == ["rotate", "rollback"]
    assert complete(bash_script, "keys", "create", "--algorithm", "ec") == ["ec-p256", "ec-p384"]
    assert complete(bash_script, "--json", "keys", "list", "--state", "") == \
        ["active", "revoked", "destroy_scheduled", "destroyed"]
    assert complete(bash_script, "sign", "release", "--al") == ["--algorithm", "--allow-empty"]
    assert "--out" in complete(bash_script, "audit", "export", "--o")
    assert complete(bash_script, "audit", "verify", "--no") == ["--no-checkpoints"]
    assert complete(bash_script, "completion", "") == ["bash", "zsh", "fish"]
    # --flag=value, as bash splits it (COMP_WORDBREAKS holds "="): the flag's choices
    assert complete(bash_script, "keys", "create", "--algorithm", "=") == [
        "aes-256-gcm", "rsa-2048", "rsa-4096", "ec-p256", "ec-p384"]
    assert complete(bash_script, "keys", "create", "--algorithm", "=", "ec") == [
        "ec-p256", "ec-p384"]
    # the client flags before the command (main.py moves them after it): their values
    assert complete(bash_script, "--output", "") == ["table", "json", "text"]
    assert "--token-file" in complete(bash_script, "--to")
    assert "keys" in complete(bash_script, "--output", "json", "")
    assert complete(bash_script, "audit", "verify", "--hmac-key-file", "ferrohsm.b") == \
        ["ferrohsm.bash"]  # a value without choices completes file names


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts(shell: str, tmp_path: Path) -> None:
    text = ferrohsm("completion", shell)
    leaves = tree.leaves(build_parser())
    for command in leaves:
        assert command.path[-1] in text
    assert "aes-256-gcm" in text and "--allow-empty" in text.replace("-l allow-empty",
                                                                      "--allow-empty")
    if shell == "zsh":
        assert text.startswith("#compdef ferrohsm\n") and "compdef _ferrohsm ferrohsm" in text
    else:
        assert "complete -c ferrohsm -n '__ferrohsm_at \"keys create\"' -l algorithm -x" in text
        assert "complete -c ferrohsm -n '__ferrohsm_at \"\"' -l output -x -a 'table json text'" \
            in text
    binary = shutil.which(shell)
    if binary is None:
        return  # not installed here: the content checks above stand
    script = tmp_path / f"ferrohsm.{shell}"
    script.write_text(text)
    check = [binary, "-n", str(script)] if shell == "zsh" else [binary, "--no-execute",
                                                                 str(script)]
    done = subprocess.run(check, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr


def test_the_manual_page(tmp_path: Path) -> None:
    roff = ferrohsm("man")
    assert roff.startswith(".TH FERROHSM 1 ")
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "CLIENT SETTINGS",
                    "ENVIRONMENT", "EXIT STATUS"):
        assert f"\n.SH {section}\n" in roff
    for command in tree.leaves(build_parser()):
        assert f'.SS "{command.name}"' in roff.replace("\\-", "-")
    assert not any(line.startswith(".") and line.split()[0] not in {
        ".TH", ".SH", ".SS", ".TP", ".PP", ".B", ".BR", ".nf", ".fi"}
        for line in roff.splitlines() if line.strip())  # only man(7) macros
    if shutil.which("man") is None:
        return
    page = tmp_path / "ferrohsm.1"
    page.write_text(roff)
    done = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={**os.environ, "MANPAGER": "cat", "PAGER": "cat",
                               "MANWIDTH": "100"})
    assert done.returncode == 0, done.stderr
    assert not done.stderr.strip(), done.stderr  # groff warnings
    assert "ferrohsm keys create" in done.stdout and "EXIT STATUS" in done.stdout


def test_the_manual_page_environment_names_every_variable() -> None:
    """SHIV_ROOT, FERROHSM_DATA_DIR and the server list of FERROHSM_URL were missing; the URL's
    entry says what --server's --help says."""
    from ferrohsm.cli.manpage import environment, page
    from ferrohsm.cli.settings import client_flags
    root = build_parser()
    roff = page(root)
    section = roff[roff.index("\n.SH ENVIRONMENT\n"):roff.index("\n.SH EXIT STATUS\n")]
    names = [line[3:] for line in section.splitlines() if line.startswith(".B ")]
    for name in ("FERROHSM_URL", "FERROHSM_DATA_DIR", "FERROHSM_LISTEN", "FERROHSM_KEY_STORE",
                 "SHIV_ROOT", "FERROHSM_<SECTION>_<FIELD>"):
        assert name in names, names
    url = dict(environment(root))["FERROHSM_URL"]
    server_help = next(a.help for a in tree.options(client_flags()) if a.dest == "server")
    assert "separated by commas" in url and "separated by commas" in str(server_help)
    assert "(env " not in url and "directory for keys" in dict(environment(root))[
        "FERROHSM_DATA_DIR"]


def test_the_cli_digest_table_matches_the_crypto_registry() -> None:
    """The CLI may not import crypto/ (tests/test_architecture.py): its copy is checked here."""
    schemes = {s for a in ALGORITHMS.values() for s in a.signature_schemes}
    assert set(ops.SCHEME_HASH) == schemes
    for scheme, hash_name in ops.SCHEME_HASH.items():
        assert crypto_ops.hash_name(scheme) == hash_name
    signing = {name: a for name, a in ALGORITHMS.items() if a.signature_schemes}
    assert set(ops.ALGORITHM_HASH) == set(signing)
    for name, algorithm in signing.items():
        assert ops.ALGORITHM_HASH[name] == crypto_ops.hash_name(str(algorithm.default_scheme))


@pytest.mark.skipif(shutil.which("groff") is None, reason="needs groff (apt-get install groff)")
def test_the_manual_page_renders_without_warnings(tmp_path: Path) -> None:
    """Long lists of choices (--algorithm of sign) ran past the margin: troff said it "cannot
    adjust line" when `man` showed the page."""
    from ferrohsm.cli.manpage import page
    (tmp_path / "ferrohsm.1").write_text(page(build_parser()))
    done = subprocess.run(["groff", "-man", "-Tutf8", "-rLL=78n", str(tmp_path / "ferrohsm.1")],
                          capture_output=True, text=True, check=True)
    assert done.stderr == "", done.stderr
    assert "EXIT STATUS" in re.sub(".\b", "", done.stdout)  # bold is overstruck
