"""The web app: a FastAPI app over one index (`create_app`), its JSON API under /api and the page at /.

The index is opened when the app is made (a wrong folder fails at once); its network is loaded once,
in a background thread started at start-up, and /api/health answers `ready` only after that. Decoding,
describing and searching run in the thread pool, so a slow client or a long search never blocks the
event loop; uploads are added one at a time while searches go on (the Index is thread-safe).
"""
from __future__ import annotations

import asyncio
import io
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from PIL import Image
from starlette.concurrency import run_in_threadpool

from deepret.errors import DeepretError
from deepret.fileio import atomic_write_bytes, printable
from deepret.imageio import PHOTO_SUFFIXES, ImageError, image_size
from deepret.serve.inputs import (
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_MAX_UPLOAD_PIXELS,
    BadInput,
    Photo,
    check_size,
    decode_photo,
    inside,
    parse_box,
    upload_name,
)
from deepret.serve.limits import BearerToken, BodyLimit
from deepret.serve.redact import Redactor
from deepret.serve.thumbs import cache_dir_of, thumb_size, thumbnail
from deepret.version import __version__

STATIC = Path(__file__).parent / "static"
MAX_K = 100
MAX_FILES_PER_UPLOAD = 10
MAX_ID = 2**63 - 1  # ids are SQLite integers: a larger number is refused (422), not looked up
DOCS_ASSETS = "/docs-assets"  # Swagger UI served from the fastapi-offline package: /docs works offline
UPLOADS_FOLDER = "uploads"
RERANK_TOGGLES = {"qe": "alpha-qe", "diffusion": "diffusion"}  # the page's toggles -> rerank specs


@dataclass
class ServeState:
    """What the routes share: the open index, whether its network is loaded, the limits."""

    index: Any
    index_dir: Path
    token: str | None
    allow_uploads: bool
    max_upload_bytes: int
    max_pixels: int
    ready: threading.Event = field(default_factory=threading.Event)
    load_error: str | None = None
    writer: threading.Lock = field(default_factory=threading.Lock)
    redact: Redactor = field(init=False)

    def __post_init__(self) -> None:
        self.redact = Redactor(self.index.root)

    def load_model(self) -> None:
        """Load the index's network and run one tiny query through it, so no search pays for either."""
        try:
            self.index.load_model()
            self.index.describe(Image.new("RGB", (64, 64), (128, 128, 128)))
            self.ready.set()
        except Exception as exc:  # reported by /api/health, the server keeps answering
            self.load_error = self.redact.text(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__

    def require_ready(self) -> None:
        if not self.ready.is_set():
            raise BadInput(503, "the model is still loading: try again in a few seconds"
                           if self.load_error is None else f"the model failed to load: {self.load_error}")

    def photo_path(self, image_id: int) -> Path:
        """The file of `image_id`, which must be a regular file inside the collection (404 otherwise)."""
        try:
            path = self.index.path_of(image_id)
        except (DeepretError, KeyError, IndexError):
            raise BadInput(404, f"no image with id {image_id} in the index") from None
        return inside(self.index.root, path)


def create_app(index_dir: str | Path, token: str | None = None, allow_uploads: bool = False,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
               device: str | None = None, precision: str = "auto", engine: str = "auto") -> FastAPI:
    """The app serving the index at `index_dir` (DeepretError at once if it is not an index).

    `token`: every /api call needs `Authorization: Bearer <token>`; `allow_uploads`: POST /api/images
    adds photos to the collection (under its uploads/ folder) and the index; `max_pixels`: of an uploaded
    photo; `precision`, `engine`: of the queries and uploads (Index.open).
    """
    from deepret.index import Index

    index = Index.open(index_dir, device=device, precision=precision, engine=engine)
    state = ServeState(index, Path(index_dir), token or None, allow_uploads, int(max_upload_bytes), int(max_pixels))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = threading.Thread(target=state.load_model, name="deepret-model-load", daemon=True)
        loader.start()
        yield
        await asyncio.to_thread(loader.join)
        index.close()

    # no /redoc: ReDoc fetches its logo from a CDN
    app = FastAPIOffline(title="deepret", version=__version__, lifespan=lifespan, static_url=DOCS_ASSETS, redoc_url=None,
                         description="Search a photo collection by example: upload a photo (optionally a box on it) "
                                     "or pick an indexed one, get the most similar photos of the collection.")
    app.state.deepret = state
    _add_error_handlers(app, state.redact)
    app.include_router(_api(state))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    multipart_slack = 64 * 1024  # form fields and part headers around the photo bytes
    app.add_middleware(BodyLimit, default_limit=multipart_slack,
                       limits={"/api/search": max_upload_bytes + multipart_slack,
                               "/api/images": max_upload_bytes * MAX_FILES_PER_UPLOAD + multipart_slack})
    if state.token:
        app.add_middleware(BearerToken, token=state.token)  # added last: runs first, before any body is read
    return app


def _api(state: ServeState) -> APIRouter:
    """The /api routes (the bearer token, when set, is checked before them by the BearerToken middleware)."""
    api = APIRouter(prefix="/api")
    index = state.index

    @api.get("/health", summary="ready once the model is loaded")
    def health() -> JSONResponse:
        if state.ready.is_set():
            return JSONResponse({"status": "ready", "images": len(index)})
        status = "loading" if state.load_error is None else "failed"
        return JSONResponse({"status": status, "detail": state.load_error}, status_code=503)

    @api.get("/info", summary="the index: model, settings, size, factory, bytes per vector, query engine and precision")
    def info() -> dict:
        ready = state.ready.is_set()
        run = index.run_settings(index.load_model()) if ready else None
        about = {k: v for k, v in _json_safe(index.info()).items() if k != "root"}  # no server path is sent
        return {**state.redact.value(about), "ready": ready, "uploads": state.allow_uploads,
                "query_precision": run and run.precision, "query_engine": run and run.engine,
                "max_upload_bytes": state.max_upload_bytes, "max_pixels": state.max_pixels,
                "rerank_toggles": RERANK_TOGGLES}

    @api.post("/search", summary="the k most similar photos to an uploaded photo or an indexed one")
    async def search(
        file: Annotated[UploadFile | None, File(description="a photo (JPEG, PNG, WebP...); or give id")] = None,
        id: Annotated[int | None, Form(ge=0, le=MAX_ID, description="search with this indexed photo instead of an upload")] = None,
        box: Annotated[str | None, Form(description="x1,y1,x2,y2 in the upright photo's pixels")] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        offset: Annotated[int, Form(ge=0, le=1_000_000)] = 0,
        rerank: Annotated[str | None, Form(max_length=200, description="e.g. alpha-qe, diffusion")] = None,
    ) -> dict:
        state.require_ready()
        if (file is None) == (id is None):
            raise BadInput(422, "give exactly one of 'file' (an uploaded photo) and 'id' (an indexed photo)")
        photo = await _read_photo(state, file) if file is not None else None
        return await run_in_threadpool(_search, state, photo, id, box, k, offset, rerank or None)

    @api.get("/images/{image_id}", summary="the original photo", response_class=FileResponse)
    def image(image_id: Annotated[int, PathParam(ge=0, le=MAX_ID)]) -> FileResponse:
        return FileResponse(state.photo_path(image_id), headers={"Cache-Control": "private, max-age=3600"})

    @api.get("/images/{image_id}/thumb", summary="an upright JPEG thumbnail, cached on disk",
             response_class=Response)
    def thumb(image_id: Annotated[int, PathParam(ge=0, le=MAX_ID)], size: Annotated[int, Query(ge=16, le=1024)] = 256) -> Response:
        path = state.photo_path(image_id)
        try:
            data = thumbnail(path, cache_dir_of(state.index_dir), thumb_size(size))
        except (OSError, ImageError) as exc:
            raise BadInput(404, f"image {image_id} cannot be read ({exc.__class__.__name__})") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @api.post("/images", summary="add photos to the collection and the index (--allow-uploads only)")
    async def add_images(files: Annotated[list[UploadFile], File(description="one or more photos")]) -> dict:
        if not state.allow_uploads:
            raise BadInput(403, "uploads are off: start the server with --allow-uploads to add photos")
        state.require_ready()
        if len(files) > MAX_FILES_PER_UPLOAD:
            raise BadInput(413, f"{len(files)} files in one request: send at most {MAX_FILES_PER_UPLOAD}")
        photos = [await _read_photo(state, f) for f in files]
        for p in photos:
            if p.extension not in PHOTO_SUFFIXES:
                raise BadInput(415, f"{p.name} is a {p.format} file, which the index does not take: send "
                                    f"{', '.join(s.lstrip('.').upper() for s in PHOTO_SUFFIXES)}")
        return await run_in_threadpool(_add, state, photos)

    return api


async def _read_photo(state: ServeState, upload: UploadFile) -> Photo:
    """Read an upload (at most the limit + 1 bytes) and decode it in the thread pool."""
    name = upload.filename or "upload"
    data = await upload.read(state.max_upload_bytes + 1)
    check_size(len(data), state.max_upload_bytes, name)
    return await run_in_threadpool(decode_photo, data, name, state.max_upload_bytes, state.max_pixels)


def _search(state: ServeState, photo: Photo | None, image_id: int | None, box_text: str | None, k: int,
            offset: int, rerank: str | None) -> dict:
    start = time.perf_counter()
    try:
        if photo is not None:
            w, h = photo.width, photo.height
            box = parse_box(box_text, w, h)
            # not decoded yet: the index decodes the original bytes upright (EXIF) itself, as it would their file
            query_image = Image.open(io.BytesIO(photo.data))
            result = state.index.search(query_image, box=box, k=k, offset=offset, rerank=rerank)
            query = {"source": "upload", "name": photo.name}
        else:
            path = state.photo_path(image_id)
            w, h = image_size(path, upright=True, max_pixels=None)
            box = parse_box(box_text, w, h)
            result = state.index.search_id(image_id, box=box, k=k, offset=offset, rerank=rerank)
            query = {"source": "id", "id": image_id, "path": _relative(state, path)}
    except DeepretError as exc:
        raise BadInput(400, str(exc).splitlines()[0]) from None
    found = result.to_dict(rounded=True)
    timings = {**found["timings_ms"], "total": round((time.perf_counter() - start) * 1000, 2)}
    return {"query": {**query, "width": w, "height": h, "box": list(box) if box else None},
            "k": k, "offset": offset, "rerank": rerank, "total": found["total"], "results": state.redact.value(found["hits"]),
            "more": offset + len(found["hits"]) < found["total"], "timings": timings}


def _add(state: ServeState, photos: list[Photo]) -> dict:
    """Save the photos under <collection>/uploads/ with fresh names and add them to the index.

    Each file is written atomically before the index hears of it: a server killed in between leaves the
    photo in the folder but not in the index (a later `deepret index update` takes it in)."""
    folder = Path(state.index.root) / UPLOADS_FOLDER
    with state.writer:
        paths = [atomic_write_bytes(folder / upload_name(p), p.data) for p in photos]
        try:
            report = state.index.add_files(paths)
        except DeepretError as exc:  # e.g. another process is updating the index: the files wait for an update
            raise BadInput(409, str(exc).splitlines()[0]) from None
    return {"added": [_relative(state, p) for p in paths], "report": state.redact.value(report.to_dict()),
            "images": len(state.index)}


def _relative(state: ServeState, path: Path) -> str:
    root = Path(state.index.root).resolve()
    return printable(Path(path).resolve().relative_to(root).as_posix(), backslash=False)


def _json_safe(value: Any) -> Any:
    """Paths, tuples and numpy scalars in index reports made into JSON values."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def _add_error_handlers(app: FastAPI, redact: Redactor) -> None:
    """Every error is JSON {"detail": one line}, without server paths."""

    @app.exception_handler(BadInput)
    async def bad_input(request: Request, exc: BadInput) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": redact.text(exc.message)}, status_code=exc.status, headers=headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:  # a bug: logged by uvicorn, not shown
        return JSONResponse({"detail": "internal error: see the server's log"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        detail = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return JSONResponse({"detail": redact.text(detail)}, status_code=422)
