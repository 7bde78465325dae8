"""The shell commands the documentation shows, taken apart (tests/docs/test_docs_commands.py).

A fenced block is *runnable* when the line right before its fence is
``<!-- runnable -->`` or ``<!-- runnable: KIND -->`` (docs/testing.md,
"The documentation's commands").  :func:`blocks` finds every fenced block of a
Markdown file with its marker; :func:`commands` splits a ``sh`` or ``console``
block into simple commands (continuation lines joined, here-document bodies and
comments dropped, ``$(…)`` taken out as commands of their own, redirections
removed); :func:`check_autoreg` runs an ``autoreg`` argument list through
click's own parser without executing anything; :func:`inline_autoreg` finds
``autoreg …`` in the prose's code spans.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click

__all__ = [
    "Block",
    "Command",
    "blocks",
    "check_autoreg",
    "commands",
    "inline_autoreg",
    "is_placeholder",
]

_FENCE = re.compile(r"^(```+|~~~+)\s*([^`\s]*)(.*)$")
_MARKER = re.compile(r"^<!--\s*runnable(?::\s*([a-z]+))?\s*-->$")
_ANY_MARKER = re.compile(r"^\s*<!--\s*runnable")
_SEPARATORS = frozenset({"&&", "||", ";", "|", "&", "(", ")", ";;"})
_REDIRECTS = frozenset({">", ">>", "<", "<<", "<<-", ">&", "<&", "&>", ">|", "<<<"})
#: A stand-in for a ``$(…)`` substitution, so that the word keeps its place.
SUBST = "__SUBST__"


@dataclasses.dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    kind: str | None  # None: not runnable; "" plain runnable; else the marker's KIND
    text: str
    label: str = ""  # how messages name the file (default: its name)

    @property
    def where(self) -> str:
        return f"{self.label or self.path.name}:{self.line}"

    @property
    def runnable(self) -> bool:
        return self.kind is not None


@dataclasses.dataclass(frozen=True)
class Command:
    line: int  # in the file
    argv: tuple[str, ...]  # after leading VAR=value assignments
    source: str  # the logical line it came from


def blocks(path: Path, *, root: Path | None = None) -> list[Block]:
    """Every fenced block of ``path`` (named relative to ``root``); a stray marker is an error."""
    label = str(path.relative_to(root)) if root is not None else path.name
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        if _ANY_MARKER.search(lines[i]) and not _MARKER.match(lines[i].strip()):
            raise ValueError(f"{label}:{i + 1}: malformed marker {lines[i].strip()!r}")
        fence = _FENCE.match(lines[i])
        if fence is None:
            if _MARKER.match(lines[i].strip()) and not (
                i + 1 < len(lines) and _FENCE.match(lines[i + 1])
            ):
                raise ValueError(f"{label}:{i + 1}: a runnable marker must precede a fence")
            i += 1
            continue
        marker = _MARKER.match(lines[i - 1].strip()) if i else None
        end = i + 1
        while end < len(lines) and not lines[end].startswith(fence.group(1)):
            end += 1
        found.append(
            Block(
                path=path,
                line=i + 1,
                lang=fence.group(2),
                kind=None if marker is None else (marker.group(1) or ""),
                text="\n".join(lines[i + 1 : end]),
                label=label,
            )
        )
        i = end + 1
    return found


def _logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    """(file line, text) of each command line: prompts, continuations, here-documents."""
    raw = block.text.splitlines()
    console = block.lang == "console"
    i = 0
    while i < len(raw):
        number = block.line + 1 + i
        line = raw[i]
        if console:
            if not line.startswith("$ "):
                i += 1
                continue
            line = line[2:]
        while line.endswith("\\") and i + 1 < len(raw):
            i += 1
            line = line[:-1] + " " + raw[i].strip()
        i += 1
        words = _words(line, number)
        if "<<" in words or "<<-" in words:
            at = words.index("<<") if "<<" in words else words.index("<<-")
            delimiter = words[at + 1]
            while i < len(raw) and raw[i].strip() != delimiter:
                i += 1
            i += 1  # the delimiter line
        yield number, line


def _words(line: str, number: int) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        return list(lexer)
    except ValueError as exc:
        raise ValueError(f"line {number}: cannot split {line!r}: {exc}") from exc


def _substitutions(line: str) -> tuple[str, list[str]]:
    """``line`` with each outermost ``$(…)`` replaced by :data:`SUBST`, and their contents."""
    out: list[str] = []
    inner: list[str] = []
    i = 0
    while i < len(line):
        if line.startswith("$(", i):
            depth, j = 1, i + 2
            while j < len(line) and depth:
                depth += {"(": 1, ")": -1}.get(line[j], 0)
                j += 1
            inner.append(line[i + 2 : j - 1])
            out.append(SUBST)
            i = j
        else:
            out.append(line[i])
            i += 1
    return "".join(out), inner


def _split(line: str, number: int) -> Iterator[Command]:
    text, inner = _substitutions(line)
    for nested in inner:
        yield from _split(nested, number)
    current: list[str] = []
    words = _words(text, number)
    k = 0
    while k < len(words):
        word = words[k]
        if word in _SEPARATORS:
            if current:
                yield _command(current, number, line)
            current = []
        elif word in _REDIRECTS:
            if current and current[-1].isdigit():
                current.pop()  # the fd of 2>&1, 2>/dev/null
            k += 1  # its target
        else:
            current.append(word)
        k += 1
    if current:
        yield _command(current, number, line)


def _command(words: list[str], number: int, source: str) -> Command:
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words = words[1:]
    return Command(number, tuple(words), source)


def commands(block: Block) -> list[Command]:
    """The simple commands of a ``sh``/``console`` block, in order."""
    out: list[Command] = []
    for number, line in _logical_lines(block):
        out.extend(c for c in _split(line, number) if c.argv)
    return out


def is_placeholder(value: str) -> bool:
    """A value the docs leave for the reader to fill in: NODE, SECONDS, SHA256:…, $VAR."""
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", value)) or "…" in value or "$" in value


# -- autoreg's own parser -------------------------------------------------------------------

_CHECKED_TYPES = (click.Choice, click.types.IntParamType, click.types.FloatParamType)


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    return command.context_class(command, info_name=name, parent=parent, **command.context_settings)


def check_autoreg(root: click.Group, args: list[str], *, allow_group: bool = False) -> str:
    """Parse ``autoreg ARGS`` as the CLI would, executing nothing; the command path.

    Raises :class:`click.UsageError` (unknown command or option, missing or
    extra argument, a missing required option, a value a Choice or a number
    type refuses).  Placeholders (:func:`is_placeholder`) are not converted.
    A group without a subcommand passes only with ``allow_group`` (prose that
    names a group, such as ``autoreg tunnel``).
    """
    command: click.Command = root
    ctx = _context(root, "autoreg", None)
    path = ["autoreg"]
    rest = list(args)
    while True:
        parser = command.make_parser(ctx)
        opts, rest, _ = parser.parse_args(args=rest)
        if opts.get("help"):
            return " ".join(path)
        for param in command.get_params(ctx):
            value = opts.get(param.name) if param.name else None
            if param.required and value in (None, ()):
                raise click.MissingParameter(ctx=ctx, param=param)
            if value is None or not isinstance(param.type, _CHECKED_TYPES):
                continue
            for item in value if isinstance(value, list | tuple) else [value]:
                if isinstance(item, str) and not is_placeholder(item):
                    param.type.convert(item, param, ctx)
        if not isinstance(command, click.Group):
            if rest:
                raise click.UsageError(
                    f"Got unexpected extra argument{'s' if len(rest) > 1 else ''} "
                    f"({' '.join(rest)})",
                    ctx=ctx,
                )
            return " ".join(path)
        if not rest:
            if allow_group:
                return " ".join(path)
            raise click.UsageError("Missing command.", ctx=ctx)
        name, rest = rest[0], rest[1:]
        sub = command.get_command(ctx, name)
        if sub is None:
            raise click.UsageError(f"No such command {name!r}.", ctx=ctx)
        path.append(name)
        command, ctx = sub, _context(sub, name, ctx)


_INLINE = re.compile(r"(?<!`)`(autoreg(?: [^`]*)?)`(?!`)")


def inline_autoreg(path: Path) -> list[tuple[int, str, list[list[str]]]]:
    """``autoreg …`` code spans in the prose of ``path``: (line, text, argument lists).

    Usage notation is read as such: ``[--role R]`` is ``--role R``, and
    ``add/remove`` is ``add`` and, separately, ``remove``.
    """
    found = []
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if _FENCE.match(line):
            inside = not inside
            continue
        if inside:
            continue
        for match in _INLINE.finditer(line):
            text = match.group(1)
            words = text.replace("[", " ").replace("]", " ").split()[1:]
            variants: list[list[str]] = [[]]
            for word in words:
                choices = (
                    word.split("/")
                    if "/" in word and not word.startswith(("/", ".", "~")) and "=" not in word
                    else [word]
                )
                variants = [[*v, c] for v in variants for c in choices]
            found.append((number, text, variants))
    return found
