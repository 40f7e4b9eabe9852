"""``diffinfer serve``: the local web demo (``diffinfer.web``; needs ``pip install 'diffinfer[web]'``).

    diffinfer serve --port 8000 --host 127.0.0.1   # then open http://127.0.0.1:8000
"""
from __future__ import annotations

import argparse
import socket
import sys

from .common import UsageError, int_in


def check_address(host: str, port: int) -> None:
    """``UsageError`` unless ``host:port`` can be bound now (a bad host, a port in use)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"--host {host!r} is not an address of this machine ({e.strerror or e})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise UsageError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None


def cmd_serve(args) -> int:
    from ..web import MissingExtra, create_app
    try:
        app = create_app()
    except MissingExtra as e:
        print(f"diffinfer serve: error: {e}", file=sys.stderr)
        return 1
    check_address(args.host, args.port)
    import uvicorn
    print(f"diffinfer demo on http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="a local web demo: digits solvers, text decoding, inpainting",
                       description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int_in(1, 65535), default=8000, help="TCP port (default 8000)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the demo has no login)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)
