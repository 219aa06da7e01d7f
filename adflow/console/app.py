"""The console's web layer: JSON API under /api, server-rendered pages, sign-in, the audit log.

    adflow ui                       # http://127.0.0.1:8000 ; read-only until tokens are configured (auth.py)

Pages are Jinja templates over the same functions the API serves (core.py); a page's live parts (a run's
stages and log, an experiment's results) are HTML fragments the page re-fetches every few seconds, so nothing
needs a front-end build or an asset from the internet. Every backend call runs in a worker thread under a
time limit: a slow MLflow or store gives a clear error on the page, never a page that hangs. A change that
outlasts the limit is not abandoned (its thread goes on): it is answered 202 "still in progress", and the audit
entry written before it started says "pending" until the action ends and records how.

A signed-in browser carries its token in a cookie, which SameSite=Strict keeps from other sites but not from
another port on the same host (127.0.0.1:8000 and 127.0.0.1:9000 are one site). So a change made with the cookie
must come from the console's own pages: the browser's Origin / Sec-Fetch-Site must say so, and the request must
carry the header the page's scripts add (another origin's page can only add it after a CORS preflight, which the
console never grants). Bearer-token clients are not browsers and need neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from adflow.console.auth import COOKIE, Tokens
from adflow.console.core import Conflict, ConsoleCore, NotFound, Refused

HERE = Path(__file__).parent
T = TypeVar("T")
PAGE_HEADER = "X-Adflow-Console"  # sent by console.js with every change made from a page


class Pending(Exception):
    """A change still going when the time limit passed (answered 202, never "try again")."""


def cross_site(headers: Mapping[str, str], host: str) -> str | None:
    """Why a browser's request did not come from a page of this console (`host`: its Host header), or None.
    Browsers send Sec-Fetch-Site and (on a POST) Origin; a client that sends neither is not a browser."""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"a {site} request (Sec-Fetch-Site)"
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != host:
        return f"a request from another origin ({origin})"
    return None


REFUSALS = (NotFound, Refused, Conflict)  # what the core raises for a request it will not serve


def _as_http(e: Exception) -> HTTPException:
    """The answer for one of REFUSALS."""
    return HTTPException(404 if isinstance(e, NotFound) else 409 if isinstance(e, Conflict) else 422, str(e))


class TriggerIn(BaseModel):
    pipeline: str = Field(min_length=1, max_length=64)
    preset: str = Field("tiny", min_length=1, max_length=64)
    overrides: list[Annotated[str, Field(min_length=1, max_length=300)]] = Field(
        default_factory=list, max_length=50
    )


class PromoteIn(BaseModel):
    version: int | None = Field(None, ge=1, description="default: the current challenger")
    alias: str = Field("champion", min_length=1, max_length=64)
    reason: str = Field(min_length=3, max_length=500)


class RollbackIn(BaseModel):
    alias: str = Field("champion", min_length=1, max_length=64)
    reason: str = Field(min_length=3, max_length=500)


class ExperimentIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    control: str = Field("alias:champion", min_length=3, max_length=100)
    treatment: str = Field("alias:challenger", min_length=3, max_length=100)
    treatment_weight: float = Field(0.01, ge=0, le=1)
    metric: str = Field("ctr", min_length=1, max_length=32)
    min_sample: int = Field(1000, ge=1)


class RampIn(BaseModel):
    weights: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(min_length=1)


class StopIn(BaseModel):
    reason: str = Field(min_length=3, max_length=500)


class ConcludeIn(BaseModel):
    winner: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=3, max_length=500)
    promote: bool = False


def create_app(core: ConsoleCore, tokens: Tokens, timeout_s: float = 10.0) -> FastAPI:
    app = FastAPI(
        title="adflow console", version="0.1.0", docs_url="/api/docs", openapi_url="/api/openapi.json"
    )
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["dur"] = _dur
    templates.env.filters["num"] = _num

    # changes run on their own threads: one still going after the answer must not hold up the event loop's
    # shutdown (the default executor's threads are waited for)
    changes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="console-change")

    async def call(fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout=timeout_s)
        except TimeoutError:
            raise HTTPException(504, f"the backend did not answer within {timeout_s:.0f} s "
                                     f"(MLflow at {core.tracking_uri} or the A/B store); try again") from None  # fmt: skip
        except REFUSALS as e:
            raise _as_http(e) from None

    def token_of(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.cookies.get(COOKIE)

    def viewer(request: Request) -> str | None:
        return tokens.user(token_of(request))

    async def mutate(request: Request, action: str, target: str, detail: dict[str, Any],
                     fn: Callable[[str], T]) -> T:  # fmt: skip
        """Authenticate, act, and record it (refusals too: who tried what, and why it was refused)."""
        token = token_of(request)
        user = tokens.user(token)
        if user is None:
            code, why = (
                (403, "this console is read-only: no admin tokens are configured (adflow ui --tokens-file)")
                if not tokens.configured
                else (401, "an admin token is required (sign in, or send Authorization: Bearer <token>)")
                if not token
                else (403, "the admin token is not valid")
            )
            who = "anonymous" if not token else "invalid token"
            await asyncio.to_thread(core.db.audit, who, action, target, detail, f"refused ({code}): {why}")
            raise HTTPException(code, why, headers={"WWW-Authenticate": "Bearer"} if code == 401 else None)
        if not request.headers.get("authorization"):  # the cookie: a browser, maybe driven by another site
            foreign = cross_site(request.headers, request.headers.get("host", ""))
            if foreign is None and not request.headers.get(PAGE_HEADER):
                foreign = f"a request without the {PAGE_HEADER} header the console's pages send"
            if foreign is not None:
                why = f"{foreign}: a change made with the sign-in cookie must come from this console's pages"
                await asyncio.to_thread(core.db.audit, user, action, target, detail, f"refused (403): {why}")
                raise HTTPException(403, why)

        entry = await asyncio.to_thread(core.db.audit, user, action, target, detail, "pending")

        def act() -> T:
            try:
                out = fn(user)
            except Exception as e:
                http = _as_http(e) if isinstance(e, REFUSALS) else None
                core.db.settle_audit(entry, f"refused ({http.status_code}): {http.detail}" if http
                                     else f"failed: {type(e).__name__}: {e}")  # fmt: skip
                raise
            core.db.settle_audit(entry, "ok")
            return out

        done = asyncio.get_running_loop().run_in_executor(changes, act)
        try:
            return await asyncio.wait_for(asyncio.shield(done), timeout=timeout_s)
        except TimeoutError:
            # retrieved, so a later refusal is not logged as "never retrieved": the audit entry records it
            done.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise Pending(f"{action} {target} is still in progress: the backend did not answer within "
                          f"{timeout_s:.0f} s. It goes on; the audit log records its outcome when it ends "
                          "(do not repeat it).") from None  # fmt: skip
        except REFUSALS as e:
            raise _as_http(e) from None

    def page(request: Request, template: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        ctx.setdefault("error", None)
        return templates.TemplateResponse(
            request, template,
            {"user": viewer(request), "read_only": not tokens.configured, "mlflow_ui": core.mlflow_ui,
             "placement": core.placement, **ctx},
            status_code=status_code,
        )  # fmt: skip

    async def guarded(request: Request, template: str, load: Callable[[], Awaitable[dict[str, Any]]],
                      **ctx: Any) -> HTMLResponse:  # fmt: skip
        """A page whose data comes from a backend: on an error the page still renders and says what failed."""
        try:
            data = await load()
        except HTTPException as e:
            return page(request, template, e.status_code, **{**ctx, "error": str(e.detail)})
        return page(request, template, **{**ctx, **data})

    # ------------------------------------------------------------------ API: pipelines and runs
    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "placement": core.placement, "read_only": not tokens.configured}

    @app.get("/api/pipelines")
    async def api_pipelines() -> dict[str, Any]:
        return {
            "pipelines": await call(core.pipelines),
            "presets": core.presets(),
            "placement": core.placement,
        }

    @app.get("/api/runs")
    async def api_runs() -> list[dict[str, Any]]:
        return await call(core.runs)

    @app.post("/api/runs", status_code=201)
    async def api_trigger(request: Request, body: TriggerIn) -> dict[str, Any]:
        job = await mutate(request, "trigger", body.pipeline, body.model_dump(),
                           lambda who: core.trigger(body.pipeline, body.preset, body.overrides, who))  # fmt: skip
        return job.to_dict()

    @app.get("/api/runs/{run_id}")
    async def api_run(run_id: str) -> dict[str, Any]:
        return await call(core.run, run_id)

    @app.get("/api/runs/{run_id}/log", response_class=Response)
    async def api_log(run_id: str) -> Response:
        return Response(await call(core.log_tail, run_id, 100_000), media_type="text/plain")

    @app.post("/api/runs/{run_id}/cancel", status_code=202)
    async def api_cancel(request: Request, run_id: str) -> dict[str, Any]:
        return await mutate(request, "cancel", run_id, {}, lambda who: core.cancel(run_id))

    # ------------------------------------------------------------------ API: models
    @app.get("/api/models")
    async def api_models() -> list[dict[str, Any]]:
        return await call(core.models)

    @app.get("/api/models/{name}")
    async def api_model(name: str) -> dict[str, Any]:
        return await call(core.model, name)

    @app.post("/api/models/{name}/promote")
    async def api_promote(request: Request, name: str, body: PromoteIn) -> dict[str, Any]:
        return await mutate(request, "promote", name, body.model_dump(),
                            lambda who: core.promote(name, body.version, body.alias, body.reason, who))  # fmt: skip

    @app.post("/api/models/{name}/rollback")
    async def api_rollback(request: Request, name: str, body: RollbackIn) -> dict[str, Any]:
        return await mutate(request, "rollback", name, body.model_dump(),
                            lambda who: core.rollback(name, body.alias, body.reason, who))  # fmt: skip

    # ------------------------------------------------------------------ API: experiments
    @app.get("/api/experiments")
    async def api_experiments() -> list[dict[str, Any]]:
        return await call(core.experiments)

    @app.post("/api/experiments", status_code=201)
    async def api_create(request: Request, body: ExperimentIn) -> dict[str, Any]:
        return await mutate(request, "create experiment", body.name, body.model_dump(),
                            lambda who: core.create_experiment(body.name, body.control, body.treatment,
                                                               body.treatment_weight, body.metric,
                                                               body.min_sample, who))  # fmt: skip

    @app.get("/api/experiments/{name}")
    async def api_experiment(name: str) -> dict[str, Any]:
        return await call(core.experiment, name)

    @app.post("/api/experiments/{name}/ramp")
    async def api_ramp(request: Request, name: str, body: RampIn) -> dict[str, Any]:
        return await mutate(
            request, "ramp", name, body.model_dump(), lambda who: core.ramp(name, body.weights, who)
        )

    @app.post("/api/experiments/{name}/pause")
    async def api_pause(request: Request, name: str) -> dict[str, Any]:
        return await mutate(request, "pause", name, {}, lambda who: core.pause(name, who))

    @app.post("/api/experiments/{name}/stop")
    async def api_stop(request: Request, name: str, body: StopIn) -> dict[str, Any]:
        return await mutate(
            request, "stop", name, body.model_dump(), lambda who: core.stop(name, body.reason, who)
        )

    @app.post("/api/experiments/{name}/conclude")
    async def api_conclude(request: Request, name: str, body: ConcludeIn) -> dict[str, Any]:
        return await mutate(
            request, "conclude", name, body.model_dump(),
            lambda who: core.conclude(name, body.winner, body.reason, body.promote, who),
        )  # fmt: skip

    @app.get("/api/experiments/{name}/chart.png", response_class=FileResponse)
    async def api_chart(name: str) -> FileResponse:
        path = await call(core.chart, name)
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/api/audit")
    async def api_audit(limit: int = 500) -> list[dict[str, Any]]:
        return await call(core.audit, max(1, min(limit, 5000)))

    # ------------------------------------------------------------------ files (Data Docs, reports, plots)
    @app.get("/files/{path:path}")
    async def files(path: str) -> FileResponse:
        ok = core.servable("/" + path.lstrip("/"))
        if ok is None:
            raise HTTPException(404, "no such file in the workspace or the runs folder")
        return FileResponse(ok)

    # ------------------------------------------------------------------ sign-in
    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return page(request, "login.html", next=_local(next))

    @app.post("/login")
    async def login(
        request: Request, token: Annotated[str, Form()], next: Annotated[str, Form()] = "/"
    ) -> Response:
        foreign = cross_site(request.headers, request.headers.get("host", ""))
        if foreign is not None:  # another site signing this browser in (as someone it chose)
            return page(request, "login.html", 403, error=f"{foreign}: sign in from this console's page",
                        next="/")  # fmt: skip
        user = tokens.user(token.strip())
        if user is None:
            why = (
                "no admin tokens are configured: this console is read-only"
                if not tokens.configured
                else "that token is not valid"
            )
            await asyncio.to_thread(
                core.db.audit, "invalid token", "sign in", "console", {}, f"refused (401): {why}"
            )
            return page(request, "login.html", 401, error=why, next=_local(next))
        await asyncio.to_thread(core.db.audit, user, "sign in", "console", {}, "ok")
        resp = RedirectResponse(_local(next), status_code=303)
        secure = request.url.scheme == "https"
        resp.set_cookie(
            COOKIE, token.strip(), httponly=True, samesite="strict", secure=secure, max_age=12 * 3600
        )
        return resp

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        foreign = cross_site(request.headers, request.headers.get("host", ""))
        if foreign is not None:
            raise HTTPException(403, f"{foreign}: sign out from this console's page")
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    # ------------------------------------------------------------------ pages
    @app.get("/", response_class=HTMLResponse)
    async def home() -> Response:
        return RedirectResponse("/pipelines", status_code=307)

    @app.get("/pipelines", response_class=HTMLResponse)
    async def pipelines_page(request: Request) -> HTMLResponse:
        async def load() -> dict[str, Any]:
            return {"pipelines": await call(core.pipelines), "runs": await call(core.runs)}

        return await guarded(request, "pipelines.html", load, presets=core.presets(), pipelines=[], runs=[])

    @app.get("/fragments/runs", response_class=HTMLResponse)
    async def runs_fragment(request: Request) -> HTMLResponse:
        return await guarded(request, "_runs.html", lambda: _wrap("runs", call(core.runs)), runs=[])

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    async def run_page(request: Request, run_id: str) -> HTMLResponse:
        return await guarded(
            request, "run.html", lambda: _wrap("run", call(core.run, run_id)), run=None, run_id=run_id
        )

    @app.get("/fragments/runs/{run_id}", response_class=HTMLResponse)
    async def run_fragment(request: Request, run_id: str) -> HTMLResponse:
        return await guarded(
            request, "_run.html", lambda: _wrap("run", call(core.run, run_id)), run=None, run_id=run_id
        )

    @app.get("/models", response_class=HTMLResponse)
    async def models_page(request: Request) -> HTMLResponse:
        return await guarded(request, "models.html", lambda: _wrap("models", call(core.models)), models=[])

    @app.get("/models/{name}", response_class=HTMLResponse)
    async def model_page(request: Request, name: str) -> HTMLResponse:
        return await guarded(
            request, "model.html", lambda: _wrap("model", call(core.model, name)), model=None, name=name
        )

    @app.get("/experiments", response_class=HTMLResponse)
    async def experiments_page(request: Request) -> HTMLResponse:
        return await guarded(
            request, "experiments.html", lambda: _wrap("experiments", call(core.experiments)), experiments=[]
        )

    @app.get("/experiments/{name}", response_class=HTMLResponse)
    async def experiment_page(request: Request, name: str) -> HTMLResponse:
        return await guarded(
            request, "experiment.html", lambda: _wrap("exp", call(core.experiment, name)), exp=None, name=name
        )

    @app.get("/fragments/experiments/{name}", response_class=HTMLResponse)
    async def experiment_fragment(request: Request, name: str) -> HTMLResponse:
        return await guarded(
            request,
            "_experiment.html",
            lambda: _wrap("exp", call(core.experiment, name)),
            exp=None,
            name=name,
        )

    @app.get("/audit", response_class=HTMLResponse)
    async def audit_page(request: Request) -> HTMLResponse:
        return await guarded(request, "audit.html", lambda: _wrap("entries", call(core.audit)), entries=[])

    @app.exception_handler(Pending)
    async def pending(request: Request, exc: Pending) -> Response:
        return JSONResponse({"pending": True, "detail": str(exc)}, status_code=202)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith(("/api/", "/files/")) or request.method != "GET":
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return page(request, "error.html", exc.status_code, error=str(exc.detail))

    return app


async def _wrap(key: str, value: Awaitable[Any]) -> dict[str, Any]:
    return {key: await value}


def _local(url: str) -> str:
    """Only redirect within the console (an open redirect would send a signed-in person anywhere)."""
    return url if url.startswith("/") and not url.startswith("//") else "/"


def _dur(v: float | None) -> str:
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def _num(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # NaN: nothing to measure (the JSON API gives null)
            return "n/a"
        return f"{v:.0f}" if v.is_integer() and abs(v) >= 1 else f"{v:.4g}"
    return str(v)
