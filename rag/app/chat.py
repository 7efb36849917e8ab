"""The chat-style question loop: each turn is one (composed) query; results can be referred to.

Turn syntax:
  text                      search with the text (plus the attached image, if any)
  /image PATH  (or a path / URL typed alone on a line)   attach a query image for the next turns
  like #3 but in red        use result 3's image as the query image, with the new text
  /rerank on|off  /k N  /filter key=value ... | /filter clear  /grid [OUT.png]  /open N
  /mode dense|keyword|hybrid|auto   how to search (auto: hybrid for text on a catalog with text)
  /clear (drop the attached image)  /help  /quit (also exit, Ctrl-D, Ctrl-C)

The loop takes input/output streams so tests can drive it; a bad turn prints one line and the
loop goes on.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rag.errors import MMSearchError

logger = logging.getLogger(__name__)

HELP = __doc__.split("Turn syntax:\n", 1)[1].split("\n\nThe loop", 1)[0]
_REF = re.compile(r"#(\d+)\b")
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class ChatState:
    """What carries over between turns."""

    image: str | None = None
    top_k: int | None = None
    rerank: bool | None = None
    filters: list[str] = field(default_factory=list)
    mode: str | None = None  # None: the engine's default for each query
    last: Any = None  # the last SearchResult


def _looks_like_image_ref(line: str) -> bool:
    if line.startswith(("http://", "https://")):
        return True
    return " " not in line.strip() and line.lower().endswith(_IMAGE_EXT) or Path(line).is_file()


def _result_image(result: Any, n: int) -> str:
    if result is None or not result.nodes:
        raise MMSearchError("no results yet: search first, then refer to #N")
    if not 1 <= n <= len(result.nodes):
        raise MMSearchError(
            f"#{n} is out of range: the last search has {len(result.nodes)} results"
        )
    from rag.store.schema import node_image_path

    path = node_image_path(result.nodes[n - 1].node)
    if not path:
        raise MMSearchError(f"result #{n} has no image path")
    return str(path)


class ChatSession:
    """One conversation over a query engine.

    Args:
        engine: an ``MMSearchQueryEngine`` (``search`` + ``close``).
        out: where answers go.
        grid_dir: where ``/grid`` writes images (a temp dir by default).
        allow_private_urls: also fetch image URLs on private, loopback and link-local
            addresses (the SSRF guard's opt-out).
    """

    def __init__(
        self,
        engine: Any,
        out: TextIO,
        *,
        grid_dir: Path | None = None,
        allow_private_urls: bool = False,
    ) -> None:
        from rich.console import Console

        self.engine = engine
        self.state = ChatState()
        self.console = Console(file=out, width=110, highlight=False, soft_wrap=False)
        self.grid_dir = grid_dir or Path(tempfile.mkdtemp(prefix="mmsearch-grid-"))
        self.allow_private_urls = allow_private_urls
        self._skip_shown: str | None = None  # say "rerank skipped: why" once, not every turn

    def say(self, text: str) -> None:
        self.console.print(text, markup=False)

    # -- commands ---------------------------------------------------------------------
    def handle(self, line: str) -> bool:
        """Process one input line; returns False when the user wants to leave."""
        line = line.strip()
        if not line:
            return True
        if line.lower() in ("/quit", "/exit", "exit", "quit"):
            return False
        try:
            if line.startswith("/"):
                self._command(line)
            elif _looks_like_image_ref(line) and not _REF.search(line):
                self._attach(line)
            else:
                self._search(line)
        except MMSearchError as e:
            self.say(f"error: {e}")
        except Exception as e:  # a bug or a backend failure must not end the conversation
            logger.debug("turn failed", exc_info=True)
            self.say(f"error: {type(e).__name__}: {e}")
        return True

    def _command(self, line: str) -> None:
        parts = shlex.split(line)
        cmd, args = parts[0].lower(), parts[1:]
        if cmd == "/help":
            self.say(HELP)
        elif cmd == "/image":
            if not args:
                raise MMSearchError("usage: /image PATH")
            self._attach(" ".join(args))
        elif cmd == "/clear":
            self.state.image = None
            self.say("query image cleared")
        elif cmd == "/rerank":
            if args not in (["on"], ["off"]):
                raise MMSearchError("usage: /rerank on|off")
            self.state.rerank = args[0] == "on"
            self.say(f"rerank {args[0]}")
        elif cmd == "/k":
            if len(args) != 1 or not args[0].isdigit() or not 1 <= int(args[0]) <= 100:
                raise MMSearchError("usage: /k N (1..100)")
            self.state.top_k = int(args[0])
            self.say(f"top-k {args[0]}")
        elif cmd == "/filter":
            self._filter(args)
        elif cmd == "/mode":
            self._mode(args)
        elif cmd == "/grid":
            self._grid(args[0] if args else None)
        elif cmd == "/open":
            self._open(args)
        else:
            raise MMSearchError(f"unknown command {cmd}; /help lists the commands")

    def _attach(self, ref: str) -> None:
        from rag.core.images import load_image

        if ref.startswith(("http://", "https://")):
            from rag.core.fetch import fetch

            ref = str(fetch(ref, self.grid_dir / "urls", allow_private=self.allow_private_urls))
        load_image(ref)  # fail now, with the path, rather than at the next search
        self.state.image = ref
        self.say(f"query image: {ref} (type a request, or /clear to drop it)")

    def _filter(self, args: list[str]) -> None:
        from rag.retrieval.filters import parse_filters

        if args == ["clear"] or not args:
            self.state.filters = []
            self.say("filters cleared")
            return
        parse_filters(args)  # validate
        self.state.filters = args
        self.say("filters: " + " and ".join(args))

    def _mode(self, args: list[str]) -> None:
        from rag.core.query import SEARCH_MODES

        if not args:
            last = self.state.last.query.get("mode") if self.state.last is not None else None
            self.say(
                f"mode {self.state.mode or 'auto'}" + (f" (last search: {last})" if last else "")
            )
            return
        if len(args) != 1 or args[0] not in (*SEARCH_MODES, "auto"):
            raise MMSearchError("usage: /mode dense|keyword|hybrid|auto")
        self.state.mode = None if args[0] == "auto" else args[0]
        self.say(f"mode {args[0]}")

    def _grid(self, out: str | None) -> None:
        from rag.app.display import save_result_grid

        if self.state.last is None:
            raise MMSearchError("no results yet")
        path = out or str(self.grid_dir / f"results-{id(self.state.last):x}.png")
        self.say(f"grid saved to {save_result_grid(self.state.last, path)}")

    def _open(self, args: list[str]) -> None:
        if len(args) != 1 or not args[0].lstrip("#").isdigit():
            raise MMSearchError("usage: /open N")
        path = _result_image(self.state.last, int(args[0].lstrip("#")))
        self.say(path)
        opener = shutil.which("xdg-open") or shutil.which("open")
        if opener and sys.stdout.isatty() and (sys.platform == "darwin" or _has_display()):
            subprocess.Popen([opener, path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _search(self, line: str) -> None:
        from rag.app.display import print_results

        image = self.state.image
        text = line
        ref = _REF.search(line)
        if ref:
            image = _result_image(self.state.last, int(ref.group(1)))
            text = _REF.sub("this", line, count=1).strip()
        with self.console.status("searching..."):
            result = self.engine.search(
                text=text,
                image=image,
                top_k=self.state.top_k,
                filters=self.state.filters or None,
                rerank=self.state.rerank,
                mode=self.state.mode,
            )
        self.state.last = result
        if image:
            self.say(f"query: {text!r} + image {image}")
        detail = result.rerank.get("detail", "")
        print_results(result, self.console, show_skip=detail != self._skip_shown)
        if result.rerank["status"] == "skipped":
            self._skip_shown = detail


def _has_display() -> bool:
    import os

    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_chat(
    engine: Any,
    stdin: TextIO,
    stdout: TextIO,
    *,
    prompt: str = "mmsearch> ",
    allow_private_urls: bool = False,
) -> int:
    """Read turns from ``stdin`` until /quit or EOF; returns the number of turns handled."""
    session = ChatSession(engine, stdout, allow_private_urls=allow_private_urls)
    session.say("mmsearch chat: type a request, attach an image with /image PATH, /help, /quit")
    turns = 0
    interactive = stdin.isatty() if hasattr(stdin, "isatty") else False
    while True:
        try:
            if interactive:
                line = input(prompt)
            else:
                stdout.write(prompt)
                stdout.flush()
                line = stdin.readline()
                if not line:
                    stdout.write("\n")
                    break
        except (EOFError, KeyboardInterrupt):
            stdout.write("\n")
            break
        turns += 1
        if not session.handle(line):
            break
    session.say("bye")
    return turns
