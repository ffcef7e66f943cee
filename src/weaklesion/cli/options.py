"""Options that several verbs take, declared once so that they read the same in every
``--help``: ``--overwrite``, ``--set``, ``--resume``, ``--device`` and ``--channel``."""

from __future__ import annotations

from typing import Annotated

import typer

Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace OUT if it holds files (as a whole).")
]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a configuration key: KEY=VALUE (repeatable)."),
]
Resume = Annotated[bool, typer.Option(help="Continue a stopped run from last.pt.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda.")]
Channel = Annotated[int | None, typer.Option(help="Channel of a multi-channel map.")]
