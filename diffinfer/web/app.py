"""The demo's FastAPI application: ``GET /`` the page (``static/index.html`` + ``app.js``),
``GET /api/options`` the menus and caps, ``POST /api/digits`` / ``/api/text`` /
``/api/inpaint`` the views (``api``), ``GET /api/digit/{index}`` a real digit for the mask
canvas. A bad field answers HTTP 400 ``{"error": message}`` (a malformed body too); a
failure at run time answers 500 with its one-line message; the page shows either."""
from __future__ import annotations

import pathlib

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from . import api

STATIC = pathlib.Path(__file__).resolve().parent / "static"


def _error(status: int, message: str) -> JSONResponse:
    text = " ".join(str(message).split())
    return JSONResponse({"error": text[:2000]}, status_code=status)


async def _json_body(request: Request):
    try:
        return await request.json()
    except ValueError as e:
        raise api.BadRequest(f"the request body is not JSON ({e})") from None


async def _answer(request: Request, compute):
    """Run ``compute(body)`` in a worker thread (the event loop stays free); errors as JSON."""
    try:
        body = await _json_body(request)
        return JSONResponse(await run_in_threadpool(compute, body))
    except api.BadRequest as e:
        return _error(400, str(e))
    except (ValueError, KeyError) as e:  # the library refusing a combination (its message names it)
        return _error(400, str(e.args[0] if isinstance(e, KeyError) and e.args else e))
    except Exception as e:  # noqa: BLE001 - one line for the page instead of a dropped connection
        return _error(500, f"{type(e).__name__}: {e}")


def create_app() -> FastAPI:
    app = FastAPI(title="diffinfer demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/options")
    def options():
        return api.options()

    @app.get("/api/digit/{index}")
    def digit(index: str):
        try:
            return api.digit_image(index)
        except api.BadRequest as e:
            return _error(400, str(e))

    @app.post("/api/digits")
    async def digits(request: Request):
        return await _answer(request, api.sample_digits)

    @app.post("/api/text")
    async def text(request: Request):
        return await _answer(request, api.decode_text)

    @app.post("/api/inpaint")
    async def inpaint(request: Request):
        return await _answer(request, api.inpaint_digit)

    return app
