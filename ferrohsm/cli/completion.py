"""`ferrohsm completion bash|zsh|fish`: shell completion generated from the argparse tree.

The script is data plus a small walker: for each command path, its subcommands, its flags, the
flags that take a value and the choices of those that have them (tree.walk). The walker finds the
command path in the words typed so far (words that name a subcommand of the path so far), then
offers a flag's choices, files for other flag values, flags after a '-', else the subcommands.
Nothing here is maintained by hand, so a new command or flag completes as soon as it parses.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from . import tree
from .settings import client_flags

SHELLS = ("bash", "zsh", "fish")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("completion", allow_abbrev=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="print a shell completion script (bash, zsh or fish)",
                       description="Print the completion script for SHELL, generated from "
                       "this command's own parser; load it in the shell's start-up file.",
                       epilog="examples:\n"
                       "  source <(ferrohsm completion bash)              # in ~/.bashrc\n"
                       "  ferrohsm completion zsh > \"${fpath[1]}/_ferrohsm\"  # zsh\n"
                       "  ferrohsm completion fish > ~/.config/fish/completions/ferrohsm.fish")
    p.add_argument("shell", metavar="SHELL", choices=SHELLS, help="bash, zsh or fish")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .main import build_parser
    sys.stdout.write(script(args.shell, build_parser()))
    return 0


def script(shell: str, root: argparse.ArgumentParser) -> str:
    return {"bash": bash, "zsh": zsh, "fish": fish}[shell](root)


# ---- the data, per command path -------------------------------------------------------------


def _flags(command: tree.Command) -> list[str]:
    return [s for a in tree.options(command.parser) for s in a.option_strings if s.startswith("--")
            or len(s) == 2]


def _valued(command: tree.Command) -> list[str]:
    return [s for a in tree.options(command.parser) if tree.takes_value(a)
            for s in a.option_strings]


def _choices(command: tree.Command) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for action in tree.options(command.parser):
        if action.choices and tree.takes_value(action):
            for flag in action.option_strings:
                found[flag] = [str(c) for c in action.choices]
    return found


def _case(name: str, arms: list[tuple[str, str]], shell: str) -> str:
    """A function printing the value of the arm matching its first argument."""
    if shell == "fish":
        body = "".join(f"        case {shlex.quote(key) if key else chr(39) * 2}\n"
                       f"            printf '%s\\n' {value}\n" for key, value in arms)
        return f"function {name}\n    switch \"$argv[1]\"\n{body}    end\nend\n"
    body = "".join(f"        {shlex.quote(key) if key else chr(39) * 2}) printf '%s ' {value} ;;\n"
                   for key, value in arms)
    return f"{name}() {{\n    case \"$1\" in\n{body}    esac\n}}\n"


def _words(values: list[str]) -> str:
    return " ".join(shlex.quote(v) for v in values)


def _tables(root: argparse.ArgumentParser, shell: str) -> str:
    commands = [_with_client_flags(c) for c in tree.walk(root)]
    subs = [(" ".join(c.path), _words(list(c.children))) for c in commands if c.children]
    flags = [(" ".join(c.path), _words(_flags(c))) for c in commands if _flags(c)]
    valued = [(" ".join(c.path), _words(_valued(c))) for c in commands if _valued(c)]
    choices = [(" ".join((*c.path, flag)), _words(values)) for c in commands
               for flag, values in _choices(c).items()]
    args = [(" ".join(c.path), _words(_argument_choices(c))) for c in commands
            if _argument_choices(c)]
    return "".join(_case(f"__ferrohsm_{kind}", arms, shell) for kind, arms in (
        ("subcommands", subs), ("flags", flags), ("valued", valued), ("choices", choices),
        ("arguments", args)))


def _with_client_flags(command: tree.Command) -> tree.Command:
    """The root as it is really used: it also takes the client flags, which main.py moves
    after the command (``ferrohsm --output json keys list``), so ``ferrohsm --output <TAB>``
    offers what ``ferrohsm keys list --output <TAB>`` does, not the commands."""
    if command.path:
        return command
    parser = argparse.ArgumentParser(add_help=False, parents=[client_flags()])
    for action in tree.options(command.parser):  # --help, --version
        parser._add_action(action)
    return tree.Command((), parser, command.help, command.children)


def _argument_choices(command: tree.Command) -> list[str]:
    """The choices of the command's positional argument, if it has any (`completion SHELL`)."""
    for action in tree.positionals(command.parser):
        if action.choices:
            return [str(c) for c in action.choices]
    return []


def _header(name: str) -> str:
    return f"# {name} completion for ferrohsm, generated from its parser by `ferrohsm " \
           f"completion {name}`.\n"


def bash(root: argparse.ArgumentParser) -> str:
    return _header("bash") + _tables(root, "bash") + r'''
__ferrohsm_path() {
    # The command path in COMP_WORDS[1..COMP_CWORD-1]: words naming a subcommand of the path so far.
    local cmdpath="" w i subs
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${COMP_WORDS[i]}"
        [[ "$w" == -* ]] && continue
        subs=" $(__ferrohsm_subcommands "$cmdpath") "
        if [[ "$subs" == *" $w "* ]]; then cmdpath="${cmdpath:+$cmdpath }$w"; fi
    done
    echo "$cmdpath"
}

_ferrohsm() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" cmdpath key
    ((COMP_CWORD > 0)) && prev="${COMP_WORDS[COMP_CWORD - 1]}"
    # --flag=value: bash splits the word at "=" (COMP_WORDBREAKS), so "=" is a word of its own
    if [[ "$cur" == "=" ]]; then
        cur=""
    elif [[ "$prev" == "=" ]] && ((COMP_CWORD > 1)); then
        prev="${COMP_WORDS[COMP_CWORD - 2]}"
    fi
    cmdpath="$(__ferrohsm_path)"
    COMPREPLY=()
    if [[ "$prev" == -* && " $(__ferrohsm_valued "$cmdpath") " == *" $prev "* ]]; then
        key="${cmdpath:+$cmdpath }$prev"
        local choices
        choices="$(__ferrohsm_choices "$key")"
        if [[ -n "$choices" ]]; then
            mapfile -t COMPREPLY < <(compgen -W "$choices" -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        fi
        return 0
    fi
    if [[ "$cur" == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(__ferrohsm_flags "$cmdpath")" -- "$cur")
        return 0
    fi
    local subs
    subs="$(__ferrohsm_subcommands "$cmdpath")$(__ferrohsm_arguments "$cmdpath")"
    if [[ -n "$subs" ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$subs" -- "$cur")
    else
        mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    fi
    return 0
}

complete -o bashdefault -o default -F _ferrohsm ferrohsm
'''


def zsh(root: argparse.ArgumentParser) -> str:
    return "#compdef ferrohsm\n" + _header("zsh") + _tables(root, "zsh") + r'''
_ferrohsm() {
    local cmdpath="" w i cur="${words[CURRENT]}" prev="${words[CURRENT-1]}"
    local -a subs
    for ((i = 2; i < CURRENT; i++)); do
        w="${words[i]}"
        [[ "$w" == -* ]] && continue
        subs=(${=$(__ferrohsm_subcommands "$cmdpath")})
        if (( ${subs[(Ie)$w]} )); then cmdpath="${cmdpath:+$cmdpath }$w"; fi
    done
    local -a valued
    valued=(${=$(__ferrohsm_valued "$cmdpath")})
    if [[ "$prev" == -* ]] && (( ${valued[(Ie)$prev]} )); then
        local -a choices
        choices=(${=$(__ferrohsm_choices "${cmdpath:+$cmdpath }$prev")})
        if (( ${#choices} )); then compadd -- $choices; else _files; fi
        return
    fi
    if [[ "$cur" == -* ]]; then
        compadd -- ${=$(__ferrohsm_flags "$cmdpath")}
        return
    fi
    subs=(${=$(__ferrohsm_subcommands "$cmdpath")} ${=$(__ferrohsm_arguments "$cmdpath")})
    if (( ${#subs} )); then compadd -- $subs; else _files; fi
}

if [[ "${funcstack[1]}" == "_ferrohsm" ]]; then
    _ferrohsm "$@"
else
    compdef _ferrohsm ferrohsm
fi
'''


def fish(root: argparse.ArgumentParser) -> str:
    lines = [_header("fish"), _tables(root, "fish"), r'''
function __ferrohsm_path
    set -l tokens (commandline -opc)
    set -e tokens[1]
    set -l cmdpath ''
    for w in $tokens
        string match -q -- '-*' $w; and continue
        if contains -- $w (__ferrohsm_subcommands "$cmdpath")
            set cmdpath (string trim -- "$cmdpath $w")
        end
    end
    echo $cmdpath
end

function __ferrohsm_at
    test (__ferrohsm_path | string collect) = "$argv[1]"
end

complete -c ferrohsm -f
''']
    for command in map(_with_client_flags, tree.walk(root)):
        where = f"'__ferrohsm_at \"{' '.join(command.path)}\"'"  # names: [a-z-] only
        sub = tree.subparsers(command.parser)
        helps = {a.dest: a.help or "" for a in sub._choices_actions} if sub else {}
        for name in command.children:
            lines.append(f"complete -c ferrohsm -n {where} -a {shlex.quote(name)} "
                         f"-d {shlex.quote(_short(helps.get(name, '')))}\n")
        if _argument_choices(command):
            lines.append(f"complete -c ferrohsm -n {where} -a "
                         f"{shlex.quote(' '.join(_argument_choices(command)))}\n")
        for action in tree.options(command.parser):
            lines.append(_fish_option(where, action))
    return "".join(lines)


def _fish_option(where: str, action: argparse.Action) -> str:
    parts = [f"complete -c ferrohsm -n {where}"]
    for flag in action.option_strings:
        parts.append(f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}")
    if tree.takes_value(action):
        parts.append(f"-x -a {shlex.quote(' '.join(str(c) for c in action.choices))}"
                     if action.choices else "-r -F")
    parts.append(f"-d {shlex.quote(_short(str(action.help or '')))}")
    return " ".join(parts) + "\n"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 70 else text[:67] + "..."
