"""The `spermhead` command. Thin: each command parses options and calls one module."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from spermhead.errors import SpermheadError

app = typer.Typer(help="Classify human sperm heads into WHO morphology classes.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Read, summarise, preview and synthesise datasets.", no_args_is_help=True)
bench_app = typer.Typer(help="Published-protocol benchmarks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
console = Console()
err_console = Console(stderr=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Folder holding HuSHeM/ and "
                    "SCIAN-MorphoSpermGS/ (default: $SPERMHEAD_DATA, else ./data).")]


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show user errors as one red line and exit 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpermheadError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper


@data_app.command("summary")
@friendly
def data_summary(
    name: Annotated[str, typer.Argument(help="hushem, scian-pa, scian-ta, scian-pa4, combined, or a folder")],
    data_dir: DataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Count images per class and per source."""
    from rich.table import Table

    from spermhead.data.readers import load_dataset

    summary = load_dataset(name, data_dir).summary()
    if as_json:
        print(json.dumps(summary))
        return
    for key in ("classes", "sources"):
        table = Table(key, "images", title=f"{name}: {summary['total']} images" if key == "classes" else None)
        for label, n in summary[key].items():
            table.add_row(label, str(n))
        console.print(table)
