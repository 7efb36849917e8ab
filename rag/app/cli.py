"""The `mmsearch` command line: a thin layer over the library.

Heavy imports (torch, transformers, llama_index, pymilvus) happen inside the commands so that
`mmsearch --help` stays fast. Every user-facing failure is an ``MMSearchError``: printed as one
line on stderr with exit code 1, never a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import TYPE_CHECKING, Any

import typer

from rag.errors import MMSearchError

if TYPE_CHECKING:
    from rag.core.settings import Settings

app = typer.Typer(
    name="mmsearch",
    help="Multimodal semantic search over image catalogs (Visualized BGE + Milvus + VLM rerank).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _settings(**overrides: Any) -> Any:
    from rag.core.settings import load_settings

    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def _echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


_NOISY_LOGGERS = (
    "pymilvus.decorators",
    "pymilvus.client.connection_manager",
    "pymilvus.client.grpc_handler",
    "pymilvus.milvus_client.milvus_client",
)


def _drop_record(record: logging.LogRecord) -> bool:
    return False


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details to stderr."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        _quiet_libraries()


def _quiet_libraries() -> None:
    """pymilvus logs every failed RPC at ERROR before raising (our one-line message says it),
    and resets its loggers when it is imported: call again after a command imports it."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("pymilvus", "milvus_lite", "grpc"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        # pymilvus' import re-configures its loggers (dictConfig resets their levels), but
        # keeps filters: the loggers that write those lines get one that drops everything.
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).addFilter(_drop_record)


@app.command()
def stats(
    as_json: bool = typer.Option(False, "--json", help="Print the stats as JSON."),
) -> None:
    """Show the collection (rows, dimension, embedding model, index, URI) and the device and
    dtype the embedding model would run in here, with why."""
    from rag.store.milvus import collection_info, lite_scale_note

    s = _settings()
    info = collection_info(s.milvus_uri, s.milvus_token_value, s.collection).to_dict()
    info.update(_compute_facts(s))
    note = lite_scale_note(s.milvus_uri, info["rows"])
    if note:  # stderr: --json output stays one JSON document
        typer.echo(note, err=True)
    if as_json:
        _echo_json(info)
        return
    if not info["exists"]:
        typer.echo(
            f"collection {info['collection']!r} at {info['uri']} does not exist yet "
            "(0 rows); run `mmsearch ingest PATH`"
        )
    else:
        for key in ("collection", "uri", "rows", "dim", "model", "index_type", "metric"):
            typer.echo(f"{key:<11} {info[key]}")
        text = ",".join(info["text_fields"]) if info["text_index"] else "none (mmsearch reindex)"
        typer.echo(f"{'text_index':<11} {text}")
    typer.echo(f"{'device':<11} {info['device']}")
    typer.echo(f"{'dtype':<11} {info['dtype']} ({info['dtype_reason']})")


def _compute_facts(s: Settings) -> dict[str, str]:
    """The device and dtype the embedding model runs in on this machine, and why (no model
    is loaded; the dtype may take a one-off micro-benchmark, cached per machine)."""
    from rag.core.device import choose_dtype, resolve_device

    device = resolve_device(s.device)
    choice = choose_dtype(s.dtype, device)
    return {"device": str(device), "dtype": choice.name, "dtype_reason": choice.reason}


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


def _ingest_progress(bar: Any, label: str) -> Any:
    """A (done, total) callback that drives ``bar`` and shows the rate."""
    import time

    task = bar.add_task(label, total=None, rate="")
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - t0, 1e-9)
        bar.update(task, completed=done, total=total, rate=f"{rate:.1f} items/s")

    return progress


@app.command()
def ingest(
    paths: list[str] = typer.Argument(..., help="Folders, images or catalog files (.jsonl/.csv)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per batch."),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        help="Decode/download threads (default: 2 on CPU, every core on CUDA).",
    ),
    prune: bool = typer.Option(False, "--prune", help="Remove rows whose source file vanished."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if any item failed."),
    text_fields: str | None = typer.Option(
        None,
        "--text-fields",
        help="Catalog fields searched as text (BM25), comma-separated "
        "(default: the collection's, title,description for a new one).",
    ),
    ray: str | None = typer.Option(
        None,
        "--ray",
        metavar="[ADDRESS]",
        help="Run on Ray Data (pip install 'mmsearch[distributed]'). ADDRESS: auto, local, "
        "ray://head:10001 or host:6379; alone: a running local cluster or RAY_ADDRESS, else a "
        "new local one.",
    ),
) -> None:
    """Index images: embed them with Visualized BGE and store them in Milvus (idempotent)."""
    from ingestion.service import ingest_items, list_items
    from rag.store.text import parse_text_fields

    s = _settings(embed_batch_size=batch_size)
    fields = parse_text_fields(text_fields) if text_fields is not None else None
    options = None
    if ray is not None:
        import os

        # gRPC's C core logs an INFO line per fork once Ray starts worker processes.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        from ingestion.distributed import RayOptions, import_ray

        import_ray()  # a missing extra fails in one line, before any work
        options = RayOptions(address=ray or None)
    items = list_items(paths)  # bad paths fail before the model loads
    with _progress_bar("ingest") as bar:
        done = ingest_items(
            s,
            items,
            workers=workers,
            prune=prune,
            progress=_ingest_progress(bar, "ingest"),
            text_fields=fields,
            ray=options,
        )
    data = done.report.to_dict()
    if as_json:
        _echo_json(data)
    else:
        typer.echo(
            f"added {data['added']}, unchanged {data['unchanged']}, replaced {data['replaced']}, "
            f"pruned {data['pruned']}, failed {len(data['failed'])} "
            f"in {data['seconds']:.1f}s ({data['images_per_s']} images/s); "
            f"{done.rows} rows in {s.collection!r}"
        )
        for fail in data["failed"]:
            typer.echo(f"  skipped {fail['path']}: {fail['error']}", err=True)
    from rag.store.milvus import lite_scale_note

    note = lite_scale_note(s.milvus_uri, done.rows)
    if note:
        typer.echo(note, err=True)
    if strict and data["failed"]:
        raise typer.Exit(1)


@app.command()
def search(
    text: str | None = typer.Argument(None, help="Query text or instruction."),
    image: str | None = typer.Option(None, "--image", help="Query image path."),
    top_k: int | None = typer.Option(None, "--top-k", min=1, max=1000, help="Results (default 9)."),
    filters: list[str] | None = typer.Option(
        None, "--filter", help="Metadata filter, e.g. category=Electronics or price<20 (repeat)."
    ),
    no_rerank: bool = typer.Option(False, "--no-rerank", help="Keep retrieval order."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
    grid: str | None = typer.Option(None, "--grid", help="Save results as one image (PNG)."),
    mode: str | None = typer.Option(
        None,
        "--mode",
        help="dense (embeddings), keyword (BM25 on catalog text) or hybrid (both fused); "
        "default: hybrid for text-only queries on a catalog with text, else dense.",
    ),
) -> None:
    """Search the catalog with text, an image, or an image plus an instruction."""
    from rich.console import Console

    from rag.app.display import print_results, save_result_grid
    from rag.core.images import decode_image
    from rag.core.query import check_mode
    from rag.errors import EmptyQueryError
    from rag.factory import build_query_engine
    from rag.retrieval.filters import parse_filters

    if not (text and text.strip()) and not image:
        raise EmptyQueryError("empty query: give a TEXT, an --image PATH, or both")
    search_mode = check_mode(mode)
    parsed = parse_filters(filters)
    # Decoded once, here: a bad query image fails before any model loads.
    query_image = decode_image(image) if image else None
    s = _settings()
    engine = build_query_engine(s, rerank=False if no_rerank else None)
    try:
        result = engine.search(
            text=text, image=query_image, top_k=top_k, filters=parsed, mode=search_mode
        )
    finally:
        engine.close()
    grid_path = save_result_grid(result, grid) if grid else None
    if as_json:
        data = result.to_dict()
        if grid_path:
            data["grid"] = grid_path
        _echo_json(data)
        return
    console = Console()
    print_results(result, console)
    if grid_path:
        console.print(f"grid saved to {grid_path}")


@app.command()
def reindex(
    text_fields: str | None = typer.Option(
        None,
        "--text-fields",
        help="Catalog fields searched as text, comma-separated (default: the collection's, "
        "title,description for a collection without a text index).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Build the text index (BM25 on catalog text) from the stored metadata; no re-embedding."""
    from rag.store.milvus import CatalogStore
    from rag.store.reindex import reindex as run_reindex
    from rag.store.text import parse_text_fields

    s = _settings()
    fields = parse_text_fields(text_fields) if text_fields is not None else None
    store = CatalogStore(
        uri=s.milvus_uri, token=s.milvus_token_value, collection=s.collection, create=False
    )
    try:
        with _progress_bar("reindex") as bar:
            report = run_reindex(store, fields, progress=_ingest_progress(bar, "reindex"))
    finally:
        store.close()
    data = report.to_dict()
    if as_json:
        _echo_json(data)
        return
    how = "text index added" if data["rebuilt"] else "text rebuilt"
    typer.echo(
        f"{how}: {data['rows']} rows of {data['collection']!r} ({data['with_text']} with text "
        f"from {','.join(data['text_fields'])}) in {data['seconds']:.1f}s"
    )


@app.command()
def chat(
    no_rerank: bool = typer.Option(False, "--no-rerank", help="Keep retrieval order."),
) -> None:
    """A question loop: search by conversation, refine with earlier results (#N)."""
    from rich.console import Console

    from rag.app.chat import run_chat
    from rag.factory import build_query_engine

    s = _settings()
    with Console(stderr=True).status("loading models..."):
        engine = build_query_engine(s, rerank=False if no_rerank else None)
    try:
        run_chat(engine, sys.stdin, sys.stdout, allow_private_urls=s.allow_private_urls)
    finally:
        engine.close()


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (others need a key)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
) -> None:
    """Serve the HTTP API and the search page (models load once; Ctrl-C stops)."""
    from rag.app.server.config import check_bind
    from rag.app.server.run import serve as run_server

    s = _settings()
    check_bind(host, s.api_key)  # before any model loads
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"loading models; then serving http://{shown}:{port} (the search page; API docs at "
        "/docs). Ctrl-C stops.",
        err=True,
    )
    run_server(s, host=host, port=port)


@app.command("eval")
def eval_(
    queries: list[str] = typer.Argument(
        ...,
        help="Query files: our JSONL, or CIRR / FashionIQ caption files (several: e.g. the "
        "three FashionIQ categories).",
    ),
    images: str | None = typer.Option(None, "--images", help="Folder with the data set images."),
    no_rerank: bool = typer.Option(False, "--no-rerank", help="Retrieval metrics only."),
    both: bool = typer.Option(False, "--both", help="Retrieval and rerank metrics."),
    top_k: int = typer.Option(
        10, "--top-k", min=10, max=25, help="Candidates the VLM reranks per query."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    plot_out: str | None = typer.Option(None, "--plot", help="Save a bar chart (PNG)."),
    protocol: str | None = typer.Option(
        None, "--protocol", help="cirr, fashioniq or plain (default: detected from the file)."
    ),
    split_files: list[str] = typer.Option(
        [], "--split-file", help="Official image_splits/*.json: the gallery (repeatable)."
    ),
    modes: list[str] = typer.Option(
        [], "--mode", help="Search mode(s): dense, keyword, hybrid (repeatable or a comma list)."
    ),
    submission_dir: str = typer.Option(
        "submissions", "--submission-dir", help="Where test splits write submission files."
    ),
) -> None:
    """Benchmark retrieval and rerank: CIRR / FashionIQ protocols, or our labelled JSONL."""
    from pathlib import Path

    from rag.evaluation.prepare import prepare, read_sets
    from rag.evaluation.runner import evaluate, parse_modes
    from rag.factory import build_query_engine

    if no_rerank and both:
        raise MMSearchError("--no-rerank and --both exclude each other")
    stages = ["retrieval"] if no_rerank else ["retrieval", "rerank"] if both else ["rerank"]
    search_modes = parse_modes(modes)
    image_dir = Path(images) if images else None
    sets, proto = read_sets([Path(q) for q in queries], image_dir, protocol)
    engine = build_query_engine(_settings(), rerank="rerank" in stages)
    _quiet_libraries()
    try:
        prep = prepare(engine, sets, proto, split_files=[Path(p) for p in split_files],
                       images=image_dir)  # fmt: skip
        with _progress_bar("eval") as bar:
            task = bar.add_task("eval", total=None, rate="")
            report = evaluate(
                engine, prep, stages=stages, search_modes=search_modes, top_k=top_k,
                submission_dir=Path(submission_dir),
                progress=lambda mode, i, n: bar.update(task, completed=i, total=n, rate=mode),
            )  # fmt: skip
    finally:
        engine.close()
    _print_eval(report, plot_out, as_json)


def _print_eval(report: dict[str, Any], plot_out: str | None, as_json: bool) -> None:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from rag.evaluation.plot import plot
    from rag.evaluation.report import summary, table

    header, rows = table(report)
    if plot_out and not rows:  # a test split: its submission files are the result
        typer.echo("no metrics to plot (test splits have no targets); --plot skipped", err=True)
        plot_out = None
    if plot_out:
        report["plot"] = str(plot(report, Path(plot_out)))
    if as_json:
        _echo_json(report)
        return
    out = Table(box=None)
    out.add_column(header[0])
    for name in header[1:]:
        out.add_column(name, justify="right")
    for row in rows:
        out.add_row(*row)
    console = Console()
    lines = summary(report)
    console.print(lines[0])
    if rows:
        console.print(out)
    for line in lines[1:]:
        console.print(line)
    if plot_out:
        console.print(f"plot saved to {report['plot']}")


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

    from rag.embedding.hub import default_dir, pull

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

    from rag.embedding.hub import default_dir, import_files

    s = _settings()
    dest = Path(directory) if directory else default_dir(variant, s.models_dir)
    path = import_files(variant, Path(checkpoint), Path(text_model), dest)
    typer.echo(f"model ready in {path}")


data_app = typer.Typer(help="Download demo data sets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("pull")
def data_pull(
    name: str = typer.Argument(..., help="amazon-subset (the original notebook's 900 images)."),
) -> None:
    """Download, verify and extract a demo data set under MMSEARCH_DATA_DIR."""
    from ingestion.datasets import amazon_subset_paths, pull_amazon_subset

    if name != "amazon-subset":
        raise MMSearchError(f"unknown data set {name!r}; available: amazon-subset")
    images, query = amazon_subset_paths(pull_amazon_subset(_settings().data_dir))
    typer.echo(f"images in {images}; query image {query}")


@app.command()
def demo(
    synthetic: bool = typer.Option(
        False, "--synthetic", help="Offline: random-weight tiny model + generated images."
    ),
    no_rerank: bool = typer.Option(False, "--no-rerank", help="Keep retrieval order."),
) -> None:
    """The main job: pull the demo catalog and model, ingest, run the leopard query."""
    from rich.console import Console

    from rag.app import demo as demo_job
    from rag.app.display import print_results

    console = Console(stderr=True)

    def say(msg: str) -> None:  # steps on a terminal; piped stderr keeps only results/errors
        if console.is_terminal:
            console.print(f"[dim]{msg}[/dim]")

    rerank = False if no_rerank else None
    plan = demo_job.prepare(_settings(), synthetic=synthetic, say=say, rerank=rerank)
    if synthetic:
        console.print(f"[yellow]{demo_job.SYNTHETIC_NOTE}[/yellow]")
    if plan.rerank and plan.rerank.note:  # the demo trusts the pinned VLM code: say so
        console.print(plan.rerank.note, style="yellow", markup=False, soft_wrap=True)
    with _progress_bar("ingest") as bar:
        done = demo_job.run(
            plan,
            rerank=rerank,
            progress=_ingest_progress(bar, "ingest"),
            say=say,
        )
    report = done.ingest.report
    console.print(
        f"ingested: added {report.added}, unchanged {report.unchanged}, failed {len(report.failed)}"
    )
    out = Console()
    out.print(f"query: {plan.text!r} + {plan.query_image}")
    print_results(done.result, out)
    out.print(f"results grid: {done.grid_path}")
    out.print(
        f"search this index again with:\n  {demo_job.search_command(plan)}",
        soft_wrap=True,
        markup=False,
    )


_RAY_ADDRESS = re.compile(r"^(auto|local|ray://\S+|[\w.-]+:\d+)$")


def _ray_flag(argv: list[str]) -> list[str]:
    """`--ray` takes an optional ADDRESS: alone (or before a path or another option) it stands
    for Ray's default address, spelled ``--ray=`` for the parser."""
    out = []
    for i, arg in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        out.append("--ray=" if arg == "--ray" and not (nxt and _RAY_ADDRESS.match(nxt)) else arg)
    return out


def main() -> None:
    """Console-script entry point."""
    try:
        # standalone: click handles usage errors (exit 2) and Ctrl-C itself
        app(args=_ray_flag(sys.argv[1:]))
    except MMSearchError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
