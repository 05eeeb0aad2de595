"""Dashboard pages (Jinja2). Pages read through the services; every change goes through the JSON API
from the page's JavaScript, authenticated by the session cookie plus the CSRF token in the page."""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from obow.config import list_presets
from server.api.deps import (
    CSRF_HEADER,
    SESSION_COOKIE,
    DbDep,
    IdPath,
    SettingsDep,
    authenticate,
    client_address,
    current_session_token,
    get_throttle,
)
from server.core import kinds as kinds_service
from server.core import notes
from server.core.errors import NotFound
from server.core.models import Run
from server.core.resources import lab_dir
from server.core.text import clean_text, is_clean
from server.services import compare as compare_service
from server.services import evaluations as evaluations_service
from server.services import events as events_service
from server.services import organise as organise_service
from server.services import runs as runs_service
from server.services import tokens
from server.services import words as words_service

TEMPLATES = Jinja2Templates(directory=str(lab_dir("templates")))
router = APIRouter(include_in_schema=False)


def page_reader(request: Request, settings: SettingsDep) -> None:
    """Pages show runs, logs and results: without a session (or a bearer token) they redirect to the
    login page, which brings the reader back here; `OBOW_LAB_PUBLIC_READ=1` opens them."""
    if settings.public_read or authenticate(request) is not None:
        return
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    raise HTTPException(303, "log in first", {"Location": "/login?" + urlencode({"next": target})})


ReaderPage = [Depends(page_reader)]


def _context(request: Request, db, settings, **extra: Any) -> dict[str, Any]:
    user = current_session_token(request, db, settings)
    cookie = request.cookies.get(SESSION_COOKIE)
    return {
        "request": request,
        "user": user,
        "csrf": tokens.csrf_token(settings.secret_key, cookie) if user is not None and cookie else "",
        **extra,
    }


def _render(name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    """The page as HTML whose text is always encodable: a stored row holding a lone surrogate (written
    before the checks, or by hand) shows as U+FFFD instead of failing the whole page with a 500."""
    html = TEMPLATES.get_template(name).render(context)
    return HTMLResponse(html if is_clean(html) else clean_text(html), status_code=status)


@router.get("/", response_class=HTMLResponse, dependencies=ReaderPage)
def runs_page(request: Request, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    kinds = kinds_service.kinds()
    return _render("runs.html", _context(request, db, settings, kinds=kinds, can_import="import" in kinds))


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, db: DbDep, settings: SettingsDep, next: str = "/") -> HTMLResponse:
    return _render("login.html", _context(request, db, settings, next=_safe_next(next), error=None))


def _safe_next(target: str) -> str:
    """Only same-site paths: a login link must not redirect to another site."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


@router.post("/login", response_model=None)
def login(
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    token: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    """No CSRF token here (there is no session yet to bind one to). Login CSRF would put a victim into
    the attacker's session, but every token is an operator of this lab with the same rights, so an
    attacker needs a valid token already and gains nothing by it; the SameSite=Strict cookie set here
    is never sent with a cross-site request.

    Wrong tokens count against the client's address (`server.services.throttle`): after 5 the address
    waits 1 s, then 2, 4 ... (429 with Retry-After). The session is a row of its own (`web_sessions`),
    ending after OBOW_LAB_SESSION_HOURS, at logout, or when its token is revoked or expires."""
    throttle, address = get_throttle(request), client_address(request)
    wait = throttle.retry_after(address)
    if wait is not None:
        message = f"Too many failed logins from this address: try again in {wait} s."
        ctx = _context(request, db, settings, next=_safe_next(next), error=message)
        response = _render("login.html", ctx, status=429)
        response.headers["Retry-After"] = str(wait)
        return response
    row = tokens.verify_token(db, token.strip())
    if row is None:
        throttle.failed(address)
        ctx = _context(request, db, settings, next=_safe_next(next), error="Unknown, revoked or expired token.")
        return _render("login.html", ctx, status=401)
    throttle.succeeded(address)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        tokens.start_session(db, settings.secret_key, row, settings.session_hours),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=int(settings.session_hours * 3600),
    )
    return response


@router.post("/logout", response_model=None)
def logout(request: Request, db: DbDep, settings: SettingsDep, csrf: Annotated[str, Form()] = "") -> Response:
    """The page's form sends the CSRF token as a field, a script as the same header the JSON API takes;
    without it a cross-site form could end the session. The session row is ended, so a copy of the
    cookie dies with it."""
    csrf = csrf or request.headers.get(CSRF_HEADER, "")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not tokens.csrf_ok(settings.secret_key, cookie, csrf):
        return Response("missing or wrong CSRF token", status_code=403)
    tokens.end_session(db, settings.secret_key, cookie)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/runs/new", response_class=HTMLResponse, dependencies=ReaderPage)
def new_run_page(
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    kind: str = "pretrain",
    parent: int | None = None,
    preset: str | None = None,
    from_run: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
) -> HTMLResponse:
    """`from_run=<id>` fills the form with that run's full spec (a sweep's "Promote best")."""
    source = runs_service.get_run(db, from_run) if from_run is not None else None
    if source is not None:
        kind, preset = source.kind, None
        parent = source.parent_id if parent is None else parent
    if kind not in kinds_service.kinds() or kind == "import":
        kind = "pretrain"
    parent_run = runs_service.get_run(db, parent) if parent is not None else None
    schemas = {k: kinds_service.json_schema(k) for k in kinds_service.kinds()}
    ctx = _context(
        request,
        db,
        settings,
        kind=kind,
        parent=parent_run,
        parents=runs_service.runs_with_weights(db),
        kinds=[k for k in kinds_service.kinds() if k != "import"],  # imports start from an upload
        presets=list_presets(),
        preset=preset if preset in list_presets() else None,
        schemas_json=json.dumps(schemas).replace("</", "<\\/"),
        kind_info=json.dumps({k: kinds_service.describe(k) for k in kinds_service.kinds()}).replace("</", "<\\/"),
        from_run=source,
        from_spec=json.dumps(source.spec if source is not None else None).replace("</", "<\\/"),
    )
    return _render("new_run.html", ctx)


@router.get("/runs/{run_id}", response_class=HTMLResponse, dependencies=ReaderPage)
def run_page(request: Request, run_id: IdPath, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    try:
        run = runs_service.get_run(db, run_id)
    except NotFound as err:
        return _render("error.html", _context(request, db, settings, message=err.message), status=404)
    children, _ = runs_service.list_runs(db, parent_id=run_id, limit=500)
    # runs that hold weights (pretraining, imports) are evaluated; an evaluation's own results are not
    holds_weights = run.kind not in ("export", "words", "baseline") and not evaluations_service.is_evaluation(run.kind)
    child_kinds = [
        k
        for k in kinds_service.kinds()
        if holds_weights and k not in ("pretrain", "import", "export") and kinds_service.weights_field(k) is not None
    ]
    ctx = _context(
        request,
        db,
        settings,
        run=run,
        children=children,
        child_kinds=child_kinds,
        can_export="export" in kinds_service.kinds(),
        can_words=run.kind == "pretrain" and "words" in kinds_service.kinds(),
        is_evaluation=evaluations_service.is_evaluation(run.kind),
        can_evaluate=bool(child_kinds),
        collapsed=words_service.collapsed_levels(run.last_metrics),
        note_html=notes.render(run.note),
        # the stream starts where this render stands, so nothing falls between history and live events
        cursor=str(events_service.start_cursor(db)),
    )
    return _render("run.html", ctx)


@router.get("/usage", response_class=HTMLResponse, dependencies=ReaderPage)
def usage_page(request: Request, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    """Disk use of the artifact store: total, by folder, and the largest runs."""
    usage = organise_service.total_usage(db, settings.artifact_root)
    return _render("usage.html", _context(request, db, settings, usage=usage))


@router.get("/compare", response_class=HTMLResponse, dependencies=ReaderPage)
def compare_page(
    request: Request,
    db: DbDep,
    settings: SettingsDep,
    runs: Annotated[str, Query(max_length=400)] = "",
    ids: Annotated[str, Query(max_length=400)] = "",  # the old name of `runs`, in links shared before
) -> HTMLResponse:
    """The page is the share link: `runs`, `key`, `x`, `smooth` and `log` in its URL (read by
    compare.js). Ids it cannot use are left out here; the API names them when it is asked."""
    chosen: list[int] = []
    for part in (runs or ids).split(","):
        part = part.strip()
        if part.isascii() and part.isdigit() and 1 <= int(part) <= 2**31 - 1 and int(part) not in chosen:
            chosen.append(int(part))
    chosen = chosen[: compare_service.MAX_RUNS]
    recent, _ = runs_service.list_runs(db, limit=100)
    listed = {r.id for r in recent}
    older = [r for r in (db.get(Run, i) for i in chosen if i not in listed) if r is not None]
    ctx = _context(
        request, db, settings, chosen=chosen, recent=older + list(recent), max_runs=compare_service.MAX_RUNS
    )
    return _render("compare.html", ctx)


@router.get("/runs/{run_id}/words", response_class=HTMLResponse, dependencies=ReaderPage)
def words_page(
    request: Request,
    run_id: IdPath,
    db: DbDep,
    settings: SettingsDep,
    level: str | None = None,
    page: Annotated[int, Query(ge=0)] = 0,
    word: str = "",  # the search box: empty when only the level changes
) -> HTMLResponse:
    """The cached gallery of the newest succeeded `words` child: one page of words, each with its
    patches cut out of the contact sheet by CSS background-position (offsets from the JSON index)."""
    try:
        run = runs_service.get_run(db, run_id)
    except NotFound as err:
        return _render("error.html", _context(request, db, settings, message=err.message), status=404)
    wanted = int(word) if word.strip().isdigit() else None
    found = words_service.gallery(db, settings.artifact_root, run_id)
    levels = list(found["levels"]) if found else []
    level = level if level in levels else (levels[-1] if levels else None)
    shown = None
    if found and level is not None:
        entry = found["levels"][level]
        shown = {"sheet_id": entry["sheet_id"], **words_service.page_of_words(entry["index"], page, word=wanted)}
    ctx = _context(
        request,
        db,
        settings,
        run=run,
        gallery_run=found["run"] if found else None,
        latest=words_service.latest_words_run(db, run_id),
        levels=levels,
        level=level,
        shown=shown,
        word=wanted,
        patch_px=words_service.PATCH_PX,
    )
    return _render("words.html", ctx)
