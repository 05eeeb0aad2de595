"""Dashboard pages of sweeps: the list, the definition form and the live sweep page. The form is a
plain HTML form posted here (with the page's CSRF token), because its space, spec and options are YAML
that the browser cannot parse: the server parses it, validates it exactly as `POST /api/v1/sweeps`
does and shows every error next to the field it names."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from obow.config import list_presets
from server.api.deps import SESSION_COOKIE, DbDep, EnqueueDep, IdPath, SettingsDep, current_session_token
from server.core import kinds as kinds_service
from server.core.errors import Invalid, NotFound
from server.pages import ReaderPage, _context, _render
from server.services import sweeps as sweeps_service
from server.services import tokens
from server.sweep_schemas import SweepCreate

router = APIRouter(include_in_schema=False)
EXAMPLE = files("obow").joinpath("presets", "FashionMNIST", "sweeps", "inv_delta.yaml")
# form fields holding YAML, and where in the body they go
YAML_FIELDS = {
    "spec": ("spec",),
    "space": ("space",),
    "eval_spec": ("objective", "eval_spec"),
    "pruner_options": ("pruner", "options"),
}
PLAIN_FIELDS = (
    "name",
    "kind",
    "preset",
    "method",
    "seed",
    "budget",
    "parallel",
    "direction",
    "objective_metric",
    "objective_source",
    "pruner_type",
    "pruner_metric",
    "pruner_every",
)


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False).strip() if value else ""


def form_values(body: dict[str, Any]) -> dict[str, str]:
    """A sweep body as the form's text fields."""
    objective, pruner = body.get("objective") or {}, body.get("pruner") or {}
    return {
        "name": str(body.get("name") or ""),
        "kind": str(body.get("kind") or "pretrain"),
        "preset": str(body.get("preset") or ""),
        "method": str(body.get("method") or "tpe"),
        "seed": str(body.get("seed", 0)),
        "budget": str(body.get("budget", 8)),
        "parallel": str(body.get("parallel", 1)),
        "direction": str(body.get("direction") or "maximize"),
        "objective_metric": str(objective.get("metric") or ""),
        "objective_source": str(objective.get("source") or "trial"),
        "pruner_type": str(pruner.get("type") or "none"),
        "pruner_metric": str(pruner.get("metric") or "knn_acc@1"),
        "pruner_every": str(pruner.get("every", 1)),
        "spec": _dump(body.get("spec")),
        "space": _dump(body.get("space")),
        "eval_spec": _dump(objective.get("eval_spec")),
        "pruner_options": _dump(pruner.get("options")),
    }


def body_from_form(values: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The form's fields as a sweep body; YAML that does not parse is an error naming its field."""
    errors: list[dict[str, Any]] = []
    parsed: dict[str, Any] = {}
    for field in YAML_FIELDS:
        text = values.get(field, "").strip()
        try:
            parsed[field] = yaml.safe_load(text) if text else {}
        except yaml.YAMLError as err:
            errors.append({"loc": ["body", *YAML_FIELDS[field]], "msg": f"not valid YAML: {err}"})
            parsed[field] = {}
    body: dict[str, Any] = {
        "kind": values.get("kind") or "pretrain",
        "spec": parsed["spec"],
        "space": parsed["space"],
        "method": values.get("method") or "tpe",
        "seed": values.get("seed") or 0,
        "budget": values.get("budget"),
        "parallel": values.get("parallel") or 1,
        "direction": values.get("direction") or "maximize",
        "objective": {
            "metric": values.get("objective_metric", ""),
            "source": values.get("objective_source") or "trial",
            "eval_spec": parsed["eval_spec"],
        },
        "pruner": {
            "type": values.get("pruner_type") or "none",
            "metric": values.get("pruner_metric") or "knn_acc@1",
            "every": values.get("pruner_every") or 1,
            "options": parsed["pruner_options"],
        },
    }
    if values.get("name"):
        body["name"] = values["name"]
    if values.get("preset"):
        body["preset"] = values["preset"]
    return body, errors


def _form_page(request: Request, db, settings, values: dict[str, str], errors: list[dict[str, Any]], status: int = 200):
    by_field: dict[str, list[str]] = {}
    for item in errors:
        loc = [str(p) for p in item["loc"]][1:]  # after "body"
        field = (
            {
                "objective": "objective_" + (loc[1] if len(loc) > 1 else "metric"),
                "pruner": "pruner_" + (loc[1] if len(loc) > 1 else "type"),
            }.get(loc[0], loc[0])
            if loc
            else "form"
        )
        field = {"objective_eval_spec": "eval_spec", "pruner_options": "pruner_options"}.get(field, field)
        detail = ".".join(loc[1:]) if loc and loc[0] in ("space", "spec") and len(loc) > 1 else ""
        by_field.setdefault(field, []).append(
            f"{detail}: {item['msg']}" if detail and detail not in item["msg"] else item["msg"]
        )
    sources = ["trial"] + [
        k for k in kinds_service.kinds() if kinds_service.weights_field(k) and k not in ("export", "words")
    ]
    ctx = _context(
        request,
        db,
        settings,
        values=values,
        errors=errors,
        field_errors=by_field,
        kinds=[
            k for k in kinds_service.kinds() if not kinds_service.weights_field(k) and not kinds_service.upload_field(k)
        ],
        presets=list_presets(),
        sources=sources,
    )
    return _render("new_sweep.html", ctx, status=status)


@router.get("/sweeps", response_class=HTMLResponse, dependencies=ReaderPage)
def sweeps_page(request: Request, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    return _render("sweeps.html", _context(request, db, settings))


@router.get("/sweeps/new", response_class=HTMLResponse, dependencies=ReaderPage)
def new_sweep_page(request: Request, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    """The form, filled with the Fashion-MNIST inverse-temperature example."""
    return _form_page(request, db, settings, form_values(yaml.safe_load(EXAMPLE.read_text())), [])


@router.post("/sweeps/new", response_model=None)
async def create_sweep_from_form(request: Request, db: DbDep, settings: SettingsDep, enqueue: EnqueueDep) -> Response:
    form = await request.form()
    values = {k: str(form.get(k, "")) for k in (*PLAIN_FIELDS, *YAML_FIELDS)}
    if current_session_token(request, db, settings) is None:
        return _form_page(request, db, settings, values, [{"loc": ["body"], "msg": "log in to start a sweep"}], 401)
    if not tokens.csrf_ok(settings.secret_key, request.cookies.get(SESSION_COOKIE), str(form.get("csrf", ""))):
        return _form_page(request, db, settings, values, [{"loc": ["body"], "msg": "wrong CSRF token: reload"}], 403)
    body, errors = body_from_form(values)
    if errors:
        return _form_page(request, db, settings, values, errors, 422)
    try:
        parsed = SweepCreate.model_validate(body)
        sweep = sweeps_service.create_sweep(db, parsed, settings, enqueue)
    except ValidationError as err:
        found = [{"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in err.errors()]
        return _form_page(request, db, settings, values, found, 422)
    except Invalid as err:
        return _form_page(request, db, settings, values, err.errors, 422)
    return RedirectResponse(f"/sweeps/{sweep.id}", status_code=303)


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse, dependencies=ReaderPage)
def sweep_page(request: Request, sweep_id: IdPath, db: DbDep, settings: SettingsDep) -> HTMLResponse:
    try:
        sweep = sweeps_service.get_sweep(db, sweep_id)
    except NotFound as err:
        return _render("error.html", _context(request, db, settings, message=err.message), status=404)
    return _render("sweep.html", _context(request, db, settings, sweep=sweep))
