"""Where llorch's output goes and how it looks.

Three modes, chosen once per command:

* ``--json``: machine-readable JSON on stdout (one document, or one object per line for
  event streams); errors as ``{"error": {...}}``; no colour, no tables, ever.
* terminal (stdout is a TTY): rich tables and colour (no colour when ``NO_COLOR`` is set).
* piped: plain tab-separated columns with a header line, no colour, no box drawing.

Results go to stdout; status lines ("job … queued") and errors go to stderr, so
``llorch jobs submit … > answer.txt`` captures only the generated text.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["Cell", "Output"]

Cell = str | Text
"""A table cell: plain text, or rich Text carrying colour (rendered plain when piped)."""


def _colour_allowed(stream: TextIO, env: Mapping[str, str]) -> bool:
    return _isatty(stream) and not env.get("NO_COLOR")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Output:
    """Writers for one command's results (stdout) and status/errors (stderr)."""

    def __init__(
        self,
        *,
        json_mode: bool,
        env: Mapping[str, str],
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        quiet: bool = False,
    ) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.json_mode = json_mode
        self.quiet = quiet
        self.tty = _isatty(self.stdout) and not json_mode
        colour = self.tty and _colour_allowed(self.stdout, env)
        err_colour = _colour_allowed(self.stderr, env) and not json_mode
        self.console = Console(
            file=self.stdout,
            force_terminal=self.tty,
            no_color=not colour,
            color_system="auto" if colour else None,
            highlight=False,
            emoji=False,
        )
        self.err_console = Console(
            file=self.stderr,
            force_terminal=err_colour,
            no_color=not err_colour,
            color_system="auto" if err_colour else None,
            highlight=False,
            emoji=False,
            soft_wrap=True,
        )

    # -- machine-readable ----------------------------------------------------------------------

    def json(self, document: Any) -> None:
        """Write one JSON document (pretty on a terminal, compact when piped)."""
        indent = 2 if _isatty(self.stdout) else None
        self.stdout.write(json.dumps(document, indent=indent, ensure_ascii=False) + "\n")
        self.stdout.flush()

    def json_line(self, document: Any) -> None:
        """Write one compact JSON object on its own line (NDJSON, for event streams)."""
        self.stdout.write(json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.stdout.flush()

    # -- human-readable ------------------------------------------------------------------------

    def text(self, text: str, *, newline: bool = True) -> None:
        """Write raw text to stdout and flush at once (generated tokens go through here)."""
        self.stdout.write(text + ("\n" if newline else ""))
        self.stdout.flush()

    def line(self, text: Cell = "") -> None:
        """Write one line of result text to stdout (coloured on a terminal)."""
        if self.tty:
            self.console.print(text, soft_wrap=True)
        else:
            self.text(text.plain if isinstance(text, Text) else text)

    def status(self, message: str, *, style: str | None = None) -> None:
        """A progress/status line on stderr (suppressed by ``--quiet`` and ``--json``)."""
        if self.quiet or self.json_mode:
            return
        self.err_console.print(Text("llorch: " + message, style=style or "dim"))

    def warn(self, message: str) -> None:
        """A warning on stderr (always shown)."""
        self.err_console.print(Text("llorch: " + message, style="yellow"))

    def error(self, message: str) -> None:
        """The one-line error message on stderr (always shown, never a traceback)."""
        self.err_console.print(Text("llorch: error: " + message, style="bold red"))

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Cell]],
        *,
        title: str | None = None,
        no_wrap: Sequence[str] = (),
    ) -> None:
        """A table: rich on a terminal, tab-separated with a header line when piped.

        On a terminal, columns named in ``no_wrap`` are never squeezed or wrapped; the others
        fold when the terminal is too narrow."""
        if not self.tty:
            if title:
                self.text(f"# {title}")
            self.text("\t".join(c.upper() for c in columns))
            for row in rows:
                self.text("\t".join(_plain(c) for c in row))
            return
        # kubectl-like: no borders, two spaces between columns, bold header.
        table = Table(
            title=title,
            title_justify="left",
            title_style="bold underline",
            header_style="bold",
            box=None,
            padding=(0, 2, 0, 0),
            pad_edge=False,
            show_edge=False,
            expand=False,
        )
        for i, column in enumerate(columns):
            header = column.upper()
            widest = max([len(header), *(len(_plain(row[i])) for row in rows)])
            # no_wrap columns (ids, states, numbers) keep their full width; the others fold,
            # but never narrower than their header.
            table.add_column(
                header,
                no_wrap=column in no_wrap,
                min_width=widest if column in no_wrap else min(len(header), widest),
                overflow="fold",
            )
        for row in rows:
            table.add_row(*row)
        self.console.print(table)

    def fields(self, pairs: Sequence[tuple[str, Cell]], *, title: str | None = None) -> None:
        """Key/value lines: aligned on a terminal, ``key<TAB>value`` when piped."""
        if not self.tty:
            if title:
                self.text(f"# {title}")
            for key, value in pairs:
                self.text(f"{key}\t{_plain(value)}")
            return
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column(overflow="fold")
        for key, value in pairs:
            grid.add_row(key, value)
        if title:
            self.console.print(Text(title, style="bold underline"))
        self.console.print(grid)


def _plain(cell: Cell) -> str:
    text = cell.plain if isinstance(cell, Text) else cell
    return text.replace("\t", " ").replace("\n", " ")
