"""The search page's back end: a FastAPI app over one open index, served by uvicorn.

Only pictures in the index are ever served, by their id: a URL names no path, so none can reach outside the
indexed folder (and a file whose link now points outside it is refused). Queries are capped in length, number of
phrasings and k; a bad request gets a 4xx with a one-line message, an unexpected fault a 500 with its type only.
Requests run in uvicorn's thread pool; the model answers one at a time (a lock), so concurrent queries queue up
instead of oversubscribing the CPU.
"""
from __future__ import annotations

import io
import sys
import threading
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from mclip_hbt.data.images import ImageError, open_image

from .querying import MAX_K, MAX_PHRASINGS, MAX_QUERY_CHARS, Hit, QueryError, SearchIndex, agreement_summary

STATIC_DIR = Path(__file__).parent / "static"
THUMBNAIL_SIDE = 256
THUMBNAILS_CACHED = 2048


def _hits(hits: list[Hit]) -> list[dict]:
    return [{"id": h.id, "path": h.path, "score": h.score} for h in hits]


def create_app(index: SearchIndex, model_name: str) -> FastAPI:
    app = FastAPI(title="mclip_hbt search", docs_url=None, redoc_url=None, openapi_url=None)
    model_lock = threading.Lock()
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(Exception)
    async def fault(request: Request, exc: Exception) -> JSONResponse:
        print(f"search server: {request.url.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server's log"},
                            status_code=500)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/api/info")
    def info() -> dict:
        return {"model": model_name, "images": len(index), "search": index.mode, "max_k": MAX_K,
                "max_query_chars": MAX_QUERY_CHARS, "max_phrasings": MAX_PHRASINGS}

    @app.get("/api/search")
    def search(q: str = Query(max_length=MAX_QUERY_CHARS), k: int = Query(10, ge=1, le=MAX_K),
               also: list[str] = Query(default=[])) -> dict:
        texts = [q, *also]
        try:
            with model_lock:
                hits, pairs = index.by_texts(texts, k)
        except QueryError as err:
            raise HTTPException(400, str(err)) from None
        return {"k": k, "queries": [{"query": t, "hits": _hits(h)} for t, h in zip(texts, hits)],
                "agreement": agreement_summary(hits, pairs)}

    @app.get("/api/similar/{image_id}")
    def similar(image_id: int, k: int = Query(10, ge=1, le=MAX_K)) -> dict:
        try:
            with model_lock:
                hits = index.by_id(image_id, k)
        except KeyError:
            raise HTTPException(404, f"no image {image_id} in this index") from None
        path = index.catalog.paths_of([image_id])[image_id]
        return {"k": k, "source": {"id": image_id, "path": path}, "hits": _hits(hits)}

    def indexed_file(image_id: int) -> Path:
        path = index.path_of(image_id)
        if path is None:
            raise HTTPException(404, f"no image {image_id} in this index (or its file is gone)")
        return path

    @lru_cache(maxsize=THUMBNAILS_CACHED)
    def thumbnail(path: Path, mtime_ns: int) -> bytes:
        image = open_image(path)
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        return buffer.getvalue()

    @app.get("/thumb/{image_id}")
    def thumb(image_id: int) -> Response:
        path = indexed_file(image_id)
        try:
            data = thumbnail(path, path.stat().st_mtime_ns)
        except (ImageError, OSError) as err:
            raise HTTPException(404, f"image {image_id} cannot be read now ({err})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/image/{image_id}")
    def image(image_id: int) -> FileResponse:
        return FileResponse(indexed_file(image_id))

    return app
