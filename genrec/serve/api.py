"""The HTTP API: one FastAPI app in front of the model backends, with a page to try it at / and the
OpenAPI docs at /docs, both made of files shipped in genrec/serve/page/ (nothing from a CDN).

The app knows nothing of Ray: each backend is an object with `async call(method, *args)`, a Serve
deployment handle in the Serve app (genrec/serve/deployments.py; HandleBackend turns Ray's errors of
an unavailable replica into BackendUnavailable) or a local object in the benchmark's plain server.
Routes exist only for the backends that are deployed.

Errors are JSON `{"detail": "<field>: <what is wrong>"}`: malformed JSON 400, a body over
`max_body_bytes` (refused before it is read) or a text too large under the `reject` policies 413,
a body that is not sent as JSON 415, anything else that does not fit the schema or the catalog
422. Bad input never reaches a model, so it never yields a 500. A model that cannot answer (its
replica died, or it sheds load) gives 503 with Retry-After, and a request still unanswered after
`request_timeout_s` gives 504: no request hangs.
"""
# No `from __future__ import annotations`: FastAPI must see the request classes built in request_models.
import asyncio
import dataclasses
import functools
import html
import inspect
from pathlib import Path
from typing import Any, Optional, Union

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from genrec.config import ServeConfig
from genrec.serve.recommender import CatalogSearch
from genrec.storage import fetch_file, is_uri, join

PAGE_DIR = Path(__file__).resolve().parent / "page"  # index.html, docs.html, app.js, docs.js, style.css
SEARCH_MAX_LIMIT, SEARCH_MAX_QUERY = 50, 200
RETRY_AFTER_S = 1  # what a 503 tells the client to wait: Serve restarts a dead replica in seconds


class BackendUnavailable(Exception):
    """The model could not take the request (a dead replica, or one that sheds load): HTTP 503."""


class Backend:
    """A model behind the API; `call` runs one of its methods and returns the result, or raises
    BackendUnavailable when the model cannot answer now."""

    async def call(self, method: str, *args: Any) -> Any:
        raise NotImplementedError


class HandleBackend(Backend):
    """A Ray Serve deployment, through its handle."""

    def __init__(self, handle) -> None:
        self.handle = handle

    async def call(self, method: str, *args: Any) -> Any:
        import ray
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        try:
            return await getattr(self.handle, method).remote(*args)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, BackPressureError,
                DeploymentUnavailableError) as e:
            raise BackendUnavailable(f"{type(e).__name__}: {e}"[:300]) from e


class LocalBackend(Backend):
    """An object in this process (the benchmark's plain server)."""

    def __init__(self, target) -> None:
        self.target = target

    async def call(self, method: str, *args: Any) -> Any:
        result = getattr(self.target, method)(*args)
        return await result if inspect.isawaitable(result) else result


@dataclasses.dataclass
class Backends:
    recommender: Optional[Backend] = None
    generator: Optional[Backend] = None
    matcher: Optional[Backend] = None


# -------------------------------------------------------------------------------------- schemas
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    score: float = Field(description="summed log-probability of the title (model) or the share of "
                                     "training interactions (popularity)")


class RecommendResponse(BaseModel):
    items: list[RecommendedItem]
    source: str = Field(description="model, or popularity for an empty history under empty_history=popular")
    history_used: int
    history_truncated: int = Field(description="oldest history items left out (long_history=truncate)")


class GenerateResponse(BaseModel):
    jd: str
    cv_truncated: bool


class ScoreResponse(BaseModel):
    score: float
    cv_truncated: bool
    jd_truncated: bool


class RecommendedJob(BaseModel):
    model_config = ConfigDict(extra="allow")
    jd_id: str
    title: str
    score: float


class JobsRecommendResponse(BaseModel):
    jobs: list[RecommendedJob]
    cv_truncated: bool


class CatalogItem(BaseModel):
    item_id: str
    title: str


class CatalogSearchResponse(BaseModel):
    items: list[CatalogItem] = Field(description="id match first, then id prefix, title prefix, title substring")


class ErrorResponse(BaseModel):
    detail: str


ERRORS = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 503, 504)}


def request_models(cfg: ServeConfig) -> dict[str, type[BaseModel]]:
    """Request bodies, their bounds taken from the config (so /openapi.json states them)."""
    rec, gen, match = cfg.recommender, cfg.generator, cfg.matcher
    item = Union[StrictStr, StrictInt]

    class RecommendRequest(Strict):
        history: list[item] = Field(description="the user's items, oldest first: catalog item ids or exact titles")
        k: int = Field(min(10, rec.max_k), ge=1, le=rec.max_k, description="items to return")
        exclude_history: bool = Field(False, description="leave the history's own items out of the answer")

    class GenerateRequest(Strict):
        cv: str = Field(min_length=1, description="the job seeker's CV")
        max_new_tokens: int = Field(min(128, gen.max_new_tokens), ge=1, le=gen.max_new_tokens)
        temperature: float = Field(0.7, ge=0.0, le=2.0, allow_inf_nan=False, description="0 = greedy")

    class ScoreRequest(Strict):
        cv: str = Field(min_length=1)
        jd: str = Field(min_length=1)

    class JobsRecommendRequest(Strict):
        cv: str = Field(min_length=1)
        k: int = Field(min(10, match.max_k), ge=1, le=match.max_k)

    return {"recommend": RecommendRequest, "generate": GenerateRequest, "score": ScoreRequest,
            "jobs_recommend": JobsRecommendRequest}


# ------------------------------------------------------------------------------------------ app
def create_api(cfg: ServeConfig, backends: Backends) -> FastAPI:
    app = FastAPI(title="genrec", version="1", description="Generative recommendation (GenRec) and job "
                  "matching (GIRL) behind one API. Errors: 400 malformed JSON, 413 too large, 415 not JSON, "
                  "422 invalid (each names the field); 503 a model cannot answer now (retry after Retry-After "
                  "seconds), 504 no answer in time.",
                  docs_url=None, redoc_url=None)  # FastAPI's own docs pages load their scripts from a CDN
    add_error_handlers(app)
    add_request_limits(app, cfg.max_body_bytes, cfg.request_timeout_s)
    add_pages(app)
    models = request_models(cfg)

    @app.get("/healthz")
    async def healthz():
        """Every deployed model answered a ping."""
        deployed = {name: getattr(backends, name) for name in ("recommender", "generator", "matcher")}
        for name, backend in deployed.items():
            if backend is not None:
                try:
                    await backend.call("ping")
                except Exception as e:  # a model that does not answer: unavailable, not an internal error
                    return JSONResponse({"status": "unavailable", "detail": f"{name}: {e!r}"[:500]}, status_code=503)
        return {"status": "ok", "deployed": {name: b is not None for name, b in deployed.items()}}

    @app.get("/v1/models")
    async def list_models() -> dict:
        """What is loaded, from which checkpoint, with its metrics."""
        out = {}
        for name in ("recommender", "generator", "matcher"):
            backend = getattr(backends, name)
            out[name] = jsonable_encoder(await backend.call("info")) if backend is not None else None
        return out if cfg.expose_paths else hide_paths(out)

    if backends.recommender is not None:
        RecommendRequest = models["recommend"]

        @app.post("/v1/recommend", response_model=RecommendResponse, responses=ERRORS)
        async def recommend(body: RecommendRequest) -> dict:  # type: ignore[valid-type]
            """k distinct catalog items for a history, by catalog-constrained beam search."""
            return unwrap(await backends.recommender.call("recommend", body.history, body.k, body.exclude_history))

        # The ingress reads the catalog file itself (ids and titles, no model), on the first search:
        # the type-ahead then costs no hop to a model replica, and a search waits for no beam search.
        catalog = functools.cache(lambda: CatalogSearch.from_parquet(
            fetch_file(join(cfg.recommender.data_dir, "catalog.parquet"))))

        @app.get("/v1/catalog/search", response_model=CatalogSearchResponse, responses={422: {"model": ErrorResponse}})
        async def catalog_search(
            request: Request,
            q: str = Query(min_length=1, max_length=SEARCH_MAX_QUERY, description="part of a title or an item id"),
            limit: int = Query(10, ge=1, le=SEARCH_MAX_LIMIT, description="items to return at most"),
        ) -> dict:
            """Catalog items whose id or title matches q (case-insensitive), for a type-ahead."""
            unknown = sorted(set(request.query_params) - {"q", "limit"})
            if unknown:  # as a body's misspelt field is an error, so is a query's
                raise HTTPException(422, f"{unknown[0]}: unknown query parameter (expected q, limit)")
            if not q.strip():
                raise HTTPException(422, "q: empty (only whitespace)")
            return {"items": catalog().search(q, limit)}

    if backends.generator is not None:
        GenerateRequest = models["generate"]

        @app.post("/v1/jobs/generate", response_model=GenerateResponse, responses=ERRORS)
        async def generate(body: GenerateRequest) -> dict:  # type: ignore[valid-type]
            """A job description written for the CV."""
            cv, cut = fit_text("cv", body.cv, cfg.generator.max_cv_chars, cfg.generator.long_text)
            jd = await backends.generator.call("generate", cv, body.max_new_tokens, body.temperature)
            return {"jd": jd, "cv_truncated": cut}

    if backends.matcher is not None:
        ScoreRequest, JobsRecommendRequest = models["score"], models["jobs_recommend"]
        match = cfg.matcher

        @app.post("/v1/jobs/score", response_model=ScoreResponse, responses=ERRORS)
        async def score(body: ScoreRequest) -> dict:  # type: ignore[valid-type]
            """The reward model's score of how well the JD fits the CV."""
            cv, cv_cut = fit_text("cv", body.cv, match.max_cv_chars, match.long_text)
            jd, jd_cut = fit_text("jd", body.jd, match.max_jd_chars, match.long_text)
            value = await backends.matcher.call("score", cv, jd)
            return {"score": value, "cv_truncated": cv_cut, "jd_truncated": jd_cut}

        if match.generator_dir:

            @app.post("/v1/jobs/recommend", response_model=JobsRecommendResponse, responses=ERRORS)
            async def recommend_jobs(body: JobsRecommendRequest) -> dict:  # type: ignore[valid-type]
                """Real openings for the CV: generate a JD, retrieve similar openings, rerank by reward."""
                cv, cut = fit_text("cv", body.cv, match.max_cv_chars, match.long_text)
                return {"jobs": unwrap(await backends.matcher.call("recommend", cv, body.k)), "cv_truncated": cut}

    return app


def add_pages(app: FastAPI) -> None:
    """The page at / and the docs at /docs, their scripts and style under /page/. Both HTML files hold
    a `<base href>` set to the app's root path, so that their relative links work under any Serve
    route_prefix."""
    app.mount("/page", StaticFiles(directory=PAGE_DIR), name="page")
    pages = {name: (PAGE_DIR / name).read_text() for name in ("index.html", "docs.html")}

    def render(name: str, request: Request) -> HTMLResponse:
        base = html.escape(request.scope.get("root_path", "").rstrip("/") + "/", quote=True)
        return HTMLResponse(pages[name].replace("{{base}}", base))

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        return render("index.html", request)

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        return render("docs.html", request)


def hide_paths(value: Any) -> Any:
    """Every absolute filesystem path and object-store URI in `value` (nested dicts and lists) cut to
    its last two parts."""
    if isinstance(value, dict):
        return {k: hide_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [hide_paths(v) for v in value]
    if isinstance(value, str) and is_uri(value):
        return "/".join(value.split("://", 1)[1].rstrip("/").split("/")[-2:])
    if isinstance(value, str) and value.startswith("/") and len(Path(value).parts) > 3:
        return str(Path(*Path(value).parts[-2:]))
    return value


def unwrap(result: Any) -> Any:
    """A backend answers a bad request with {"error": {status, detail}}: turn it into the HTTP error."""
    if isinstance(result, dict) and "error" in result:
        raise HTTPException(result["error"]["status"], result["error"]["detail"])
    return result


def fit_text(name: str, text: str, limit: int, policy: str) -> tuple[str, bool]:
    """(text, truncated): over `limit` characters it is cut (policy truncate) or refused with 413."""
    if not text.strip():
        raise HTTPException(422, f"{name}: empty (only whitespace)")
    if len(text) <= limit:
        return text, False
    if policy == "reject":
        raise HTTPException(413, f"{name}: {len(text)} characters, over the limit of {limit}")
    return text[:limit], True


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes gets 413 before the app reads or parses it. A declared
    Content-Length is checked before any byte is read; a chunked body is read up to the limit, then
    handed on whole."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:  # (the HTTP server has refused one that is not a number)
            if int(declared) > self.limit:
                return await self.refuse(scope, send, f"{int(declared)} bytes")
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left: nothing to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self.refuse(scope, send, f"over {self.limit} bytes so far")
            if not message.get("more_body"):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def refuse(self, scope, send, size: str) -> None:
        response = JSONResponse({"detail": f"body: {size}, over the limit of {self.limit} bytes (max_body_bytes)"},
                                status_code=413)
        await response(scope, None, send)


class Deadline:
    """ASGI middleware: a request with no answer after `timeout_s` gets 504, and the app's work on it,
    the model call included, is cancelled (a Serve handle call cancels the request on its replica)."""

    def __init__(self, app, timeout_s: float) -> None:
        self.app, self.timeout_s = app, timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, watched_send), self.timeout_s)
        except asyncio.TimeoutError:
            if not started:  # a response already begun cannot turn into a 504: the server ends it
                response = JSONResponse({"detail": f"no answer within {self.timeout_s:g} s (request_timeout_s)"},
                                        status_code=504)
                await response(scope, receive, send)


def add_request_limits(app: FastAPI, max_body_bytes: int, timeout_s: float) -> None:
    """413 for a body over max_body_bytes, unread; 504 for a request unanswered after timeout_s (its
    model call is cancelled); 503 with Retry-After when a model cannot take the request."""
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(Deadline, timeout_s=timeout_s)

    @app.exception_handler(BackendUnavailable)
    async def unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"the model cannot answer now ({exc}); retry"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        broken = [e for e in errors if e.get("type") == "json_invalid"]
        if broken:  # FastAPI would say 422; a body that is not JSON at all is a bad request
            reason = (broken[0].get("ctx") or {}).get("error", "not valid JSON")
            return JSONResponse({"detail": f"malformed JSON body: {reason}"}, status_code=400)
        content_type = request.headers.get("content-type", "")
        sent_body = content_type or int(request.headers.get("content-length") or 0) > 0
        if sent_body and "json" not in content_type and any(e.get("loc") == ("body",) for e in errors):
            return JSONResponse({"detail": f"content-type: expected application/json, got {content_type or 'none'!r}"},
                                status_code=415)
        messages = list(dict.fromkeys(describe_error(e) for e in errors))  # a union's branches say one thing
        return JSONResponse({"detail": "; ".join(messages),
                             "errors": [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                                        for e in errors]}, status_code=422)


def describe_error(error: dict) -> str:
    """`history.2: Input should be a valid string` from pydantic's error (the `body` or `query` prefix
    dropped)."""
    loc = [str(p) for p in error.get("loc", ())]
    if loc and loc[0] in ("body", "query"):
        loc = loc[1:]
    message = error.get("msg", "invalid")
    if loc and loc[-1] in ("str", "int") and error.get("type") in ("string_type", "int_type"):
        loc, message = loc[:-1], "expected an item id or title (a string or an integer)"
    return f"{'.'.join(loc) or 'body'}: {message}"
