"""``diffinfer serve``: a local web demo of the bundled models (an optional extra:
``pip install diffinfer[web]``, FastAPI + uvicorn; one static page, no build step).

- ``api``: what each view computes, framework-free (field checks, size caps, the library calls);
- ``app``: the FastAPI application (``create_app``) serving ``static/`` and the JSON endpoints;
- ``screenshots``: the screenshots of ``docs/`` (Playwright driving Debian's chromium).

Importing this package loads neither FastAPI nor torch models; ``create_app`` needs the extra
and says so (``MissingExtra``) when it is not installed.
"""
from __future__ import annotations


class MissingExtra(ImportError):
    """The ``web`` extra (FastAPI, uvicorn) is not installed."""


def require_web() -> None:
    """``MissingExtra`` naming the extra unless FastAPI and uvicorn import."""
    missing = []
    for name in ("fastapi", "uvicorn"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingExtra(f"the web demo needs {' and '.join(missing)}: pip install 'diffinfer[web]'")


def create_app():
    """The FastAPI application of the demo (``diffinfer.web.app.create_app``)."""
    require_web()
    from .app import create_app as _create
    return _create()


__all__ = ["create_app", "require_web", "MissingExtra"]
