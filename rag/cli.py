"""The `mmsearch` command line: a thin layer over the library.

Heavy imports (torch, transformers, llama_index, pymilvus) happen inside the commands so that
`mmsearch --help` stays fast. Every user-facing failure is an ``MMSearchError``: printed as one
line on stderr with exit code 1, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import typer

from rag.errors import MMSearchError

app = typer.Typer(
    name="mmsearch",
    help="Multimodal semantic search over image catalogs (Visualized BGE + Milvus + VLM rerank).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings(**overrides: Any) -> Any:
    from rag.settings import load_settings

    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details to stderr."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # pymilvus logs every failed RPC at ERROR before raising; our one-line message says it.
        for name in ("pymilvus", "milvus_lite", "grpc"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


@app.command()
def stats(
    as_json: bool = typer.Option(False, "--json", help="Print the stats as JSON."),
) -> None:
    """Show the collection: rows, dimension, embedding model, index, URI."""
    from rag.store import collection_info

    s = _settings()
    info = collection_info(s.milvus_uri, s.milvus_token_value, s.collection).to_dict()
    if as_json:
        _echo_json(info)
        return
    if not info["exists"]:
        typer.echo(
            f"collection {info['collection']!r} at {info['uri']} does not exist yet "
            "(0 rows); run `mmsearch ingest PATH`"
        )
        return
    for key in ("collection", "uri", "rows", "dim", "model", "index_type", "metric"):
        typer.echo(f"{key:<11} {info[key]}")


@app.command()
def demo() -> None:
    """Run the main job: pull the demo data and model, ingest, run the leopard query."""
    from rag.errors import MMSearchError as _E

    raise _E("the demo is not yet available: it needs the embedding model and ingestion")


def main() -> None:
    """Console-script entry point."""
    try:
        app()  # standalone: click handles usage errors (exit 2) and Ctrl-C itself
    except MMSearchError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
