"""A real C++ Milvus engine on this machine: the `milvus` binary that milvus-lite 2.5.1 ships.

It serves the Milvus gRPC protocol on a unix socket or a TCP port (the same protocol a Milvus
server speaks), so the store's server code path runs against C++ Milvus without Docker.
`make test` installs it next to, not into, the project's environment:
``pip install --target .cache/milvus-lite-2.5.1 milvus-lite==2.5.1``.

What this engine is: Milvus built for "local mode". It refuses nullable fields, ignores
collection properties (and does not implement altering them), and accepts only FLAT, IVF_FLAT
and AUTOINDEX vector indexes; a Milvus 2.5+ server has all of these. Used by the server-path
tests and by ``benchmarks/scale.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ENGINE_DIR = REPO / ".cache" / "milvus-lite-2.5.1"
INSTALL_HINT = (
    "run `make test` (it installs it), or `pip install --target .cache/milvus-lite-2.5.1 "
    "--no-deps milvus-lite==2.5.1`, or set MMSEARCH_TEST_MILVUS_BIN to its `milvus` binary"
)


def find_engine() -> tuple[Path | None, str]:
    """The engine binary, or None and why it is not there (a pytest skip reason)."""
    env = os.environ.get("MMSEARCH_TEST_MILVUS_BIN")
    binary = Path(env) if env else ENGINE_DIR / "milvus_lite" / "lib" / "milvus"
    if not binary.is_file():
        return None, f"C++ Milvus engine (milvus-lite 2.5.1) not found at {binary}: {INSTALL_HINT}"
    if not os.access(binary, os.X_OK):
        return None, f"C++ Milvus engine at {binary} is not executable"
    return binary, ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CppMilvus:
    """One engine process serving ``folder/milvus.db``.

    Args:
        binary: the `milvus` executable (see :func:`find_engine`).
        folder: where the data file, the socket and the log go.
        transport: ``unix`` (a socket in ``folder``) or ``tcp`` (a free port on 127.0.0.1).
    """

    def __init__(self, binary: Path, folder: Path, transport: str = "unix") -> None:
        self.binary = binary
        self.folder = folder
        self.transport = transport
        folder.mkdir(parents=True, exist_ok=True)
        self.db = folder / "milvus.db"
        self.socket = folder / "milvus.sock"
        self.port = _free_port() if transport == "tcp" else 0
        self.log = folder / "milvus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """What a client (and MMSEARCH_MILVUS_URI) uses to reach this engine."""
        return (
            f"unix:{self.socket}" if self.transport == "unix" else f"http://127.0.0.1:{self.port}"
        )

    def start(self, timeout_s: float = 30.0) -> CppMilvus:
        """Start the process and wait until it accepts connections."""
        address = f"unix:{self.socket}" if self.transport == "unix" else f"127.0.0.1:{self.port}"
        lib = str(self.binary.parent)
        env = {**os.environ, "LD_LIBRARY_PATH": lib}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), str(self.db), address, "ERROR"],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own group: a test's kill hits only this engine
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"engine exited with {self.proc.returncode}: {tail}")
            if self._accepting():
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"engine did not accept connections within {timeout_s:.0f}s")

    def _accepting(self) -> bool:
        family = socket.AF_UNIX if self.transport == "unix" else socket.AF_INET
        target: str | tuple[str, int] = (
            str(self.socket) if self.transport == "unix" else ("127.0.0.1", self.port)
        )
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.connect(target)
                return True
            except OSError:
                return False

    def kill(self) -> None:
        """SIGKILL: a crashed server, as a client sees it."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> CppMilvus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
