"""The command line's strict front end, run before anything heavy is imported.

fire (which dispatches the commands) reads every argument as a Python literal, so `generate "Hi, there"` once
reached the chat template as a tuple, and it accepts a misspelled flag only to fail after the whole run. Here
each argument is checked against its command's signature first: an unknown flag is refused with the closest
valid one suggested, text arguments are handed to fire quoted (so they stay text, whatever characters they
hold), and `--help` prints the command's flags, with the README's dashed spellings, to stdout.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable

TRUTH = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class UsageError(ValueError):
    """A command line that names an unknown command or flag, or gives too many arguments."""


def dashed(name: str) -> str:
    return name.replace("_", "-")


def kind(param: inspect.Parameter) -> str:
    """How a parameter reads on the command line: `bool` (a switch), `str` (kept as text) or anything else."""
    annotation = str(param.annotation).replace(" | None", "")
    return annotation if annotation in ("bool", "str") else "value"


def shown(param: inspect.Parameter) -> str:
    """A parameter's type as help prints it."""
    annotation = str(param.annotation).replace(" | None", "")
    return {"str": "TEXT", "int": "INT", "float": "FLOAT"}.get(annotation, "VALUE")


def parameters(command: Callable) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(command).parameters.items() if name != "self"}


def help_text(name: str, command: Callable | None, commands: dict[str, Callable]) -> str:
    """The help of one command, or the list of commands."""
    if command is None:
        lines = ["usage: python -m specref COMMAND [ARGS] (python -m specref COMMAND --help for its flags)", "",
                 "commands:"]
        width = max(map(len, commands)) + 2  # the longest name stays apart from its line
        lines += [f"  {n:{width}s}{(inspect.getdoc(c) or '').splitlines()[0]}" for n, c in commands.items()]
        return "\n".join(lines)
    params = parameters(command)
    positional = [dashed(n).upper() for n, p in params.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    lines = [f"usage: python -m specref {name} {' '.join(f'[{p}]' for p in positional)} [FLAGS]".rstrip(), "",
             inspect.getdoc(command) or "", "", "flags:"]
    for n, p in params.items():
        if p.kind == p.KEYWORD_ONLY:
            spelling = f"--{dashed(n)} / --no{dashed(n)}" if kind(p) == "bool" else f"--{dashed(n)} {shown(p)}"
            lines.append(f"  {spelling:34s} " + ("required" if p.default is p.empty else f"default: {p.default!r}"))
    return "\n".join(lines)


def check(commands: dict[str, Callable], argv: list[str]) -> tuple[str, list[str]] | str:
    """The command line ready for fire, as (command name, arguments), or the help text to print instead.

    Raises UsageError for an unknown command or flag, a flag without its value, or too many positional
    arguments, before any work is done.
    """
    if not argv or argv[0] in ("-h", "--help", "help"):
        return help_text("", None, commands)
    name = argv[0].replace("_", "-")
    if name not in commands:
        close = [c for c in commands if c.startswith(name)] or difflib.get_close_matches(name, list(commands), n=1)
        raise UsageError(f"unknown command {argv[0]!r}" + (f"; did you mean {close[0]}?" if close else "") +
                         f" (commands: {', '.join(commands)})")
    params = parameters(commands[name])
    positional = [p for p in params.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
    args, out, rest = argv[1:], [], []
    while args:
        token = args.pop(0)
        if token in ("-h", "--help"):
            return help_text(name, commands[name], commands)
        if token == "--":  # everything after it is positional, even text that starts with dashes
            rest += args
            break
        if not token.startswith("--"):
            rest.append(token)
            continue
        flag, has_value, value = token[2:].partition("=")
        key = flag.replace("-", "_")
        negated = key.startswith("no") and key[2:] in params and kind(params[key[2:]]) == "bool"
        key = key[2:] if negated else key
        if key not in params:
            spellings = [dashed(n) for n in params]
            close = difflib.get_close_matches(dashed(flag), spellings, n=1)
            hint = f"; did you mean --{close[0]}?" if close else f" (python -m specref {name} --help lists them)"
            raise UsageError(f"unknown flag --{flag} for {name}{hint}")
        if kind(params[key]) == "bool":
            # A switch, or a switch with a truth value (--pack=false, --pack False): fire would take the text.
            if not has_value and args and args[0].lower() in ("true", "false"):
                value, has_value = args.pop(0), True
            if has_value and value.lower() not in TRUTH:
                raise UsageError(f"--{flag} takes no value or one of true/false, got {value!r}")
            on = TRUTH.get(value.lower(), True) != negated
            out.append(f"--{key}" if on else f"--no{key}")
            continue
        if not has_value:
            if not args:
                raise UsageError(f"--{flag} needs a value")
            value = args.pop(0)
        # Always `--flag=value`: fire would take a value such as "-1" for a flag of its own.
        out.append(f"--{key}={value!r}" if kind(params[key]) == "str" else f"--{key}={value}")
    given = {a.split("=", 1)[0].removeprefix("--") for a in out}
    missing = [n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and p.default is p.empty and n not in given]
    if missing:
        raise UsageError(f"{name} needs {', '.join('--' + dashed(n) for n in missing)}")
    if len(rest) > len(positional):
        names = " ".join(dashed(p.name).upper() for p in positional) or "no"
        raise UsageError(f"{name} takes {names} positional argument(s), got {len(rest)}: {rest}; quote text that "
                         "holds spaces")
    quoted = [repr(v) if kind(p) == "str" else v for v, p in zip(rest, positional, strict=False)]
    return name, [name.replace("-", "_"), *quoted, *out]
