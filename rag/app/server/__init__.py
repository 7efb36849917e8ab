"""`mmsearch serve`: the HTTP API and the search page over one long-lived query engine."""

from rag.app.server.app import create_app
from rag.app.server.config import ServerConfig, check_bind, is_loopback_host
from rag.app.server.run import background_server, build_server_engine, serve

__all__ = [
    "ServerConfig",
    "background_server",
    "build_server_engine",
    "check_bind",
    "create_app",
    "is_loopback_host",
    "serve",
]
