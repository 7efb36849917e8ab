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


def _progress_bar(label: str) -> Any:
    """A rich progress bar on a terminal (items/s, ETA); a no-op when stderr is not a TTY."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
        transient=False,
    )


@app.command()
def ingest(
    paths: list[str] = typer.Argument(..., help="Folders, images or catalog files (.jsonl/.csv)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per batch."),
    workers: int = typer.Option(2, "--workers", min=1, help="Decode/download threads."),
    prune: bool = typer.Option(False, "--prune", help="Remove rows whose source file vanished."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any item failed."),
) -> None:
    """Index images: embed them with Visualized BGE and store them in Milvus (idempotent)."""
    import time

    from ingestion.pipeline import Ingestor
    from ingestion.sources import items_for
    from rag.factory import build_embedding, open_store

    s = _settings(embed_batch_size=batch_size)
    items = [item for p in paths for item in items_for(p)]  # bad paths fail before model load
    sources = sorted({item.source for item in items}) if prune else []
    embedding = build_embedding(s)
    store = open_store(s, embedding)
    try:
        with _progress_bar("ingest") as bar:
            task = bar.add_task("ingest", total=len(items), rate="")
            t0 = time.perf_counter()

            def progress(done: int, total: int) -> None:
                rate = done / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, completed=done, total=total, rate=f"{rate:.1f} items/s")

            report = Ingestor(
                embedding=embedding,
                store=store,
                batch_size=s.embed_batch_size,
                workers=workers,
                cache_dir=s.data_dir / "cache" / "urls",
                progress=progress,
            ).run(items, prune_sources=sources)
        rows = store.count()
    finally:
        store.close()
    data = report.to_dict()
    if as_json:
        _echo_json(data)
    else:
        typer.echo(
            f"added {data['added']}, unchanged {data['unchanged']}, replaced {data['replaced']}, "
            f"pruned {data['pruned']}, failed {len(data['failed'])} "
            f"in {data['seconds']:.1f}s ({data['images_per_s']} images/s); "
            f"{rows} rows in {s.collection!r}"
        )
        for fail in data["failed"]:
            typer.echo(f"  skipped {fail['path']}: {fail['error']}", err=True)
    if strict and data["failed"]:
        raise typer.Exit(1)


models_app = typer.Typer(help="Download or import embedding models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("pull")
def models_pull(
    variant: str = typer.Argument("base", help="base (768-d) or m3 (1024-d)."),
    directory: str | None = typer.Option(None, "--dir", help="Target model directory."),
    revision: str | None = typer.Option(None, "--revision", help="Pin a Hub commit."),
    force: bool = typer.Option(False, "--force", help="Download again even if present."),
) -> None:
    """Download a Visualized BGE variant from the Hugging Face Hub into a local directory."""
    from pathlib import Path

    from rag.model_hub import default_dir, pull

    s = _settings()
    dest = Path(directory) if directory else default_dir(variant, s.models_dir)
    path = pull(variant, dest, revision=revision, force=force)
    typer.echo(f"model ready in {path}")


@models_app.command("import")
def models_import(
    variant: str = typer.Argument(..., help="base or m3."),
    checkpoint: str = typer.Option(..., "--checkpoint", help="The Visualized_*.pth file."),
    text_model: str = typer.Option(..., "--text-model", help="bge-base-en-v1.5 / bge-m3 folder."),
    directory: str | None = typer.Option(None, "--dir", help="Target model directory."),
) -> None:
    """Assemble a model directory from files copied in by hand (offline machines)."""
    from pathlib import Path

    from rag.model_hub import default_dir, import_files

    s = _settings()
    dest = Path(directory) if directory else default_dir(variant, s.models_dir)
    path = import_files(variant, Path(checkpoint), Path(text_model), dest)
    typer.echo(f"model ready in {path}")


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
