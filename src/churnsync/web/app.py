"""The dashboard's FastAPI app: server-rendered pages over a read-only store, charts drawn by a local plotly.js.

Pages: Overview, Model, Predictions, Customer, Syncs, Segment builder (with CSV export). The app never writes
to the store: it opens it read-only (:func:`churnsync.web.queries.open_read_only`) and never migrates it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.middleware.trustedhost import TrustedHostMiddleware

from churnsync.config import Settings
from churnsync.errors import ChurnsyncError, StoreError
from churnsync.store.store import AttributeStore
from churnsync.web import charts
from churnsync.web import queries as q
from churnsync.web.auth import COOKIE, token_matches

HERE = Path(__file__).parent
T = TypeVar("T")
#: Filter rows offered by the segment builder.
SEGMENT_ROWS = 4
#: Every page: no framing, no referrer, scripts only from the app itself (plotly.js needs eval for some traces).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; font-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def plotly_js_path() -> Path:
    """plotly.js as shipped inside the plotly wheel (served by the app: no CDN, works offline)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _as_of_day(value: Any) -> str:
    # Runs store their cut (the end of the as-of day); show the day users asked for.
    if isinstance(value, datetime):
        from datetime import timedelta

        return f"{(value - timedelta(microseconds=1)):%Y-%m-%d}"
    return _fmt(value)


def create_app(
    store_url: str,
    *,
    settings: Settings | None = None,
    token: str | None = None,
    report_dir: Path | None = None,
    allowed_hosts: list[str] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """The dashboard over the store at ``store_url``; with ``token``, every request must carry it.

    ``report_dir`` holds ``churnsync evaluate``'s report.json and report.html, shown on the Model page.
    ``allowed_hosts`` limits the Host header (on loopback: against DNS rebinding by a web page in the browser).
    """
    now = clock or (lambda: datetime.now(UTC))
    state: dict[str, AttributeStore] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if "store" in state:
                state.pop("store").close()

    app = FastAPI(title="churnsync dashboard", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["fmt"] = _fmt
    templates.env.filters["day"] = _as_of_day
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    plotly_js = plotly_js_path()

    def store() -> AttributeStore:
        if "store" not in state:
            state["store"] = q.open_read_only(store_url)
        return state["store"]

    # Current values change only with a prediction run: what is computed from them is kept until the next run.
    memo: dict[str, tuple[Any, Any]] = {}

    def cached(name: str, compute: Callable[[], T]) -> T:
        latest = store().prediction_runs(limit=1)
        key = tuple(latest[0][k] for k in ("id", "status", "finished_at", "values_changed")) if latest else None
        hit = memo.get(name)
        if hit is not None and hit[0] == key:
            return cast(T, hit[1])
        value = compute()
        memo[name] = (key, value)
        return value

    def tables() -> set[str]:
        current = q.available_tables(store())
        q.ensure_store(current, store().url)
        return current

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        context.setdefault("store_url", store().url if "store" in state else "")
        context["active"] = name
        context["now"] = now()
        return templates.TemplateResponse(request, f"{name}.html", context)

    # ------------------------------------------------------------------ access

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if token is not None and path not in ("/login", "/static/style.css"):
            bearer = request.headers.get("authorization", "")
            given = (
                request.headers.get("x-churnsync-token")
                or (bearer[7:] if bearer.lower().startswith("bearer ") else None)
                or request.cookies.get(COOKIE)
            )
            if not token_matches(token, given):
                if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
                    return RedirectResponse("/login?" + urlencode({"next": path}), status_code=303)
                return Response("401 Unauthorized: send the dashboard token\n", status_code=401)
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(StoreError)
    async def store_unavailable(request: Request, exc: StoreError) -> HTMLResponse:
        context = {"message": str(exc), "active": "", "store_url": ""}
        return templates.TemplateResponse(request, "error.html", context, status_code=503)

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/", failed: bool = False) -> HTMLResponse:
        return templates.TemplateResponse(
            request, "login.html", {"next": _safe_next(next), "failed": failed, "active": "", "store_url": ""}
        )

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        target = _safe_next((form.get("next") or ["/"])[0])
        if token is None:
            return RedirectResponse(target, status_code=303)
        if not token_matches(token, given):
            return RedirectResponse("/login?" + urlencode({"next": target, "failed": "1"}), status_code=303)
        response = RedirectResponse(target, status_code=303)
        secure = request.url.scheme == "https"
        response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=secure, max_age=12 * 3600)
        return response

    @app.get("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/plotly.min.js")
    def plotly_script() -> FileResponse:
        return FileResponse(plotly_js, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    # ------------------------------------------------------------------ pages

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> HTMLResponse:
        have = tables()
        predictions = store().prediction_runs(limit=60)
        syncs = store().sync_runs(limit=60)
        for run in predictions + syncs:
            run["seconds"] = q.duration_seconds(run)
        points = q.tiers_over_time(predictions)
        schedule = _schedule(settings, now())
        return page(
            request,
            "overview",
            checks=q.health(store(), predictions, syncs, now(), have),
            predictions=predictions[:10],
            syncs=syncs[:10],
            tiers=charts.tiers_over_time(points) if points else None,
            customers=cached("customers", lambda: q.customer_count(store())),
            schedule=schedule,
        )

    @app.get("/model", response_class=HTMLResponse)
    def model(request: Request) -> HTMLResponse:
        tables()
        runs = [r for r in store().prediction_runs(limit=200) if r["status"] == "succeeded"]
        fits = [_btyd_fit(run) for run in runs]
        names = sorted({k for f in fits for k in f["params"]})
        oldest_first = list(reversed(fits))
        series = {
            name: ([f"run {f['id']}" for f in oldest_first], [f["params"].get(name) for f in oldest_first])
            for name in names
        }
        registry = _registry(settings)
        report = _report(report_dir)
        _prefer_report_curves(registry, report)
        return page(
            request,
            "model",
            fits=fits[:30],
            param_names=names,
            params_chart=charts.lines(series, "BG/NBD parameters per run", "Prediction run", "Value")
            if names
            else None,
            registry=registry,
            report=report,
            metric_notes=METRICS,
            champion_reason=(runs[0].get("details") or {}).get("champion_reason") if runs else None,
        )

    @app.get("/model/report.html")
    def model_report() -> Response:
        file = report_dir / "report.html" if report_dir is not None else None
        if file is None or not file.is_file():
            return Response(
                "No evaluation report: run `churnsync evaluate --out DIR` and serve with --report DIR\n", 404
            )
        # The report is self-contained (inline plotly.js and figures), written by churnsync evaluate.
        policy = (
            "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; img-src data:"
        )
        return FileResponse(file, media_type="text/html", headers={"Content-Security-Policy": policy})

    @app.get("/predictions", response_class=HTMLResponse)
    def predictions(request: Request) -> HTMLResponse:
        tables()
        infos = cached("attributes", lambda: q.attributes(store()))
        figures = [
            charts.histogram(hist, f"Distribution of {name}", name)
            for name, hist in cached("histograms", lambda: q.histograms(store(), infos)).items()
        ]
        segments = []
        texts = cached("texts", lambda: q.value_counts(store(), [i.name for i in infos if not i.numeric]))
        for name, counts in texts.items():
            if 0 < len(counts) <= q.MAX_SEGMENT_VALUES:
                labels = [c for c, _ in counts]
                if name.endswith("risk"):
                    order = list(charts.TIER_COLOURS)
                    labels.sort(key=lambda t: order.index(t) if t in order else 9)
                by_label = dict(counts)
                figure = charts.bars(labels, [by_label[x] for x in labels], f"Customers per {name}", name)
                segments.append({"name": name, "counts": counts, "figure": figure})
        runs = [r for r in store().prediction_runs(limit=2) if r["status"] == "succeeded"]
        moved = None
        if runs:
            previous = runs[1]["id"] if len(runs) > 1 else None
            numeric = [i.name for i in infos if i.numeric]
            moved = cached("movement", lambda: q.movement(store(), runs[0]["id"], previous, numeric))
        delta_figures = (
            [
                charts.histogram(hist, f"Change of {name} in run {moved.run_id}", f"new − old {name}")
                for name, hist in moved.deltas.items()
            ]
            if moved
            else []
        )
        return page(
            request,
            "predictions",
            attributes=infos,
            figures=figures,
            segments=segments,
            moved=moved,
            delta_figures=delta_figures,
            customers=cached("customers", lambda: q.customer_count(store())),
        )

    @app.get("/customer", response_class=HTMLResponse)
    def customer(request: Request, id: str = "") -> HTMLResponse:
        have = tables()
        customer_id = id.strip()
        if not customer_id:
            return page(request, "customer", customer_id="", found=False, similar=[])
        if "attributes" not in have:  # the store's own reads of a customer need revision 0010 (attribute codes)
            raise StoreError(
                f"store {store().url} is at an older schema revision than this churnsync's, and the customer page "
                "reads it only once upgraded (the other pages read it as it is)",
                remedy="Run `churnsync runs` against it once: every command but `serve` upgrades the store",
            )
        current = store().current_values(customer_id).get(customer_id)
        history = store().history(customer_id)
        if current is None and not history:
            similar = q.similar_customers(store(), customer_id)
            return page(request, "customer", customer_id=customer_id, found=False, similar=similar)
        series: dict[str, tuple[list[Any], list[float | None]]] = {}
        for entry in history:
            if isinstance(entry.new_value, float) or (entry.new_value is None and entry.attribute in series):
                xs, ys = series.setdefault(entry.attribute, ([], []))
                xs.append(entry.changed_at)
                ys.append(entry.new_value if isinstance(entry.new_value, float) else None)
        # Probabilities and amounts on separate charts: a CLV of 200 would flatten a probability of 0.7.
        unit = {
            n: "prob" if all(y is None or 0.0 <= y <= 1.0 for y in ys) else "amount" for n, (_, ys) in series.items()
        }
        timelines = [
            charts.lines(part, f"{title}: history of {customer_id}", "Changed at", title, steps=True)
            for kind, title in (("prob", "Probabilities"), ("amount", "Amounts and counts"))
            if (part := {n: s for n, s in series.items() if unit[n] == kind})
        ]
        return page(
            request,
            "customer",
            customer_id=customer_id,
            found=True,
            current=sorted((current or {}).items()),
            history=list(reversed(history)),
            timelines=timelines,
            destinations=q.destination_view(store(), customer_id, have),
            similar=[],
        )

    @app.get("/syncs", response_class=HTMLResponse)
    def syncs(request: Request) -> HTMLResponse:
        have = tables()
        runs = store().sync_runs(limit=200)
        for run in runs:
            run["seconds"] = q.duration_seconds(run)
        return page(
            request,
            "syncs",
            runs=runs,
            points_chart=charts.run_bars(runs[:60], "data_points", "Data points per sync run") if runs else None,
            failures=q.sync_failures(store(), have),
            dry_runs=q.dry_runs(store(), have),
        )

    @app.get("/segments", response_class=HTMLResponse)
    def segments(request: Request) -> HTMLResponse:
        tables()
        infos = cached("attributes", lambda: q.attributes(store()))
        rows = _filter_rows(request)
        filters, problems = q.parse_filters(rows, infos)
        count = preview = None
        if not problems:
            count = q.segment_count(store(), filters)
            preview = q.segment_preview(store(), filters, infos)
        prefixes = {name: d.attribute_prefix for name, d in (settings.destinations if settings else {}).items()}
        braze = {name: q.braze_filters(filters, prefix) for name, prefix in prefixes.items()} or {
            "Braze": q.braze_filters(filters)
        }
        padded = rows + [("", ">=", "")] * (SEGMENT_ROWS - len(rows))
        return page(
            request,
            "segments",
            attributes=infos,
            rows=padded[: max(SEGMENT_ROWS, len(rows))],
            numeric_ops=q.NUMERIC_OPS,
            filters=filters,
            problems=problems,
            count=count,
            preview=preview,
            braze=braze,
            total=cached("customers", lambda: q.customer_count(store())),
            export_query=urlencode([(k, v) for a, o, val in rows for k, v in (("a", a), ("o", o), ("v", val))]),
        )

    @app.get("/segments.csv")
    def segments_csv(request: Request) -> Response:
        tables()
        infos = cached("attributes", lambda: q.attributes(store()))
        filters, problems = q.parse_filters(_filter_rows(request), infos)
        if problems:
            return Response("; ".join(problems) + "\n", status_code=400, media_type="text/plain")

        def lines() -> Iterator[str]:
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(["customer_id", *(i.name for i in infos)])
            for chunk in q.segment_rows(store(), filters, infos):
                writer.writerows(chunk)
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
            yield buffer.getvalue()

        stamp = now().strftime("%Y%m%d-%H%M%S")
        headers = {"Content-Disposition": f'attachment; filename="churnsync-segment-{stamp}.csv"'}
        return StreamingResponse(lines(), media_type="text/csv", headers=headers)

    return app


def _filter_rows(request: Request) -> list[tuple[str, str, str]]:
    params = request.query_params
    a, o, v = params.getlist("a"), params.getlist("o"), params.getlist("v")
    return [(a[i], o[i] if i < len(o) else ">=", v[i] if i < len(v) else "") for i in range(len(a))]


def _safe_next(target: str) -> str:
    """Only paths of this app (no //host or scheme): the login form cannot redirect elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _schedule(settings: Settings | None, now: datetime) -> dict[str, Any]:
    """The configured cadence and its next due time (from churnsync.schedule, when the scheduler is installed)."""
    if settings is None:
        return {"cadence": None, "next_run": None}
    try:
        from churnsync.schedule import cadence_from_settings
    except ImportError:  # the scheduler (issue 6) is not part of this build
        return {"cadence": settings.schedule.cadence, "next_run": None}
    try:
        cadence = cadence_from_settings(settings.schedule)
        return {"cadence": cadence.description, "next_run": cadence.next_after(now)}
    except (ChurnsyncError, ImportError) as exc:
        return {"cadence": f"{settings.schedule.cadence} ({exc})", "next_run": None}


def _btyd_fit(run: dict[str, Any]) -> dict[str, Any]:
    """The BG/NBD fit a prediction run recorded (top-level, or under ``btyd`` next to the learned model)."""
    model: dict[str, Any] = (run.get("details") or {}).get("model") or {}
    btyd = model.get("btyd")
    fit: dict[str, Any] = btyd if isinstance(btyd, dict) else model
    params: dict[str, Any] = fit.get("params") or {}
    return {
        "id": run["id"],
        "as_of": run["as_of"],
        "model_version": run["model_version"],
        "kind": fit.get("model", "?"),
        "params": {k: v for k, v in params.items() if isinstance(v, int | float)},
        "log_likelihood": fit.get("log_likelihood"),
        "n_customers": fit.get("n_customers"),
    }


#: Validation metrics shown per candidate, in this order, with their reading direction.
METRICS = {
    "auc": "higher is better",
    "lift_quality": "higher is better",
    "pr_auc": "higher is better",
    "log_loss": "lower is better",
    "brier": "lower is better",
    "ece": "lower is better (calibration error)",
}


_NO_CURVES = "not recorded for this model (it was saved before churnsync recorded validation curves)"


def _curve(meta: dict[str, Any], key: str, champion: str) -> dict[str, Any] | None:
    """The champion's validation curve ``key`` (``calibration`` or ``gains``) saved with a model, if any."""
    recorded = meta.get("validation_curves")
    curves = recorded.get(champion) if isinstance(recorded, dict) else None
    value = curves.get(key) if isinstance(curves, dict) else None
    return value if isinstance(value, dict) and value else None


def _curve_figures(meta: dict[str, Any], champion: str, figures: dict[str, Any]) -> dict[str, str]:
    """Add the champion's calibration plot and gains chart from the registry to ``figures``; a note per missing
    one."""
    notes: dict[str, str] = {}
    calibration = _curve(meta, "calibration", champion)
    if calibration and isinstance(calibration.get("predicted"), list) and isinstance(calibration.get("observed"), list):
        counts = calibration.get("count")
        figures["calibration"] = charts.calibration(
            {champion: (calibration["predicted"], calibration["observed"])},
            counts={champion: counts} if isinstance(counts, list) else None,
            title="Calibration on the validation window",
        )
    else:
        notes["calibration"] = _NO_CURVES
    gains = _curve(meta, "gains", champion)
    if gains and isinstance(gains.get("gains"), list):
        figures["gains"] = charts.gains({champion: gains["gains"]}, title="Gains on the validation window")
    else:
        notes["gains"] = _NO_CURVES
    return notes


def _prefer_report_curves(registry: dict[str, Any], report: dict[str, Any]) -> None:
    """The backtest report's calibration plot and gains chart, when given, replace the registry's."""
    if registry.get("problem") or report.get("problem"):
        return
    for key in ("calibration", "gains"):
        if (report.get("figures") or {}).get(key):
            registry["figures"].pop(key, None)
            registry["curve_notes"][key] = "drawn above, from the backtest report"


def _registry(settings: Settings | None) -> dict[str, Any]:
    """What the model registry (issue 3) holds: versions, the one in service, its candidates and curves."""
    if settings is None:
        return {"problem": "start `churnsync serve` with --config to read the model registry"}
    model_settings = getattr(settings, "model", None)
    try:
        from churnsync.models.registry import ModelRegistry
    except ImportError:
        return {"problem": "this build has no model registry"}
    if model_settings is None:
        return {"problem": "this configuration has no [model] section"}
    registry = ModelRegistry(model_settings.registry_path)
    try:
        versions = registry.versions()
    except ChurnsyncError as exc:
        return {"problem": str(exc)}
    if not versions:
        return {"problem": f"no model saved in {model_settings.registry_path} yet (`churnsync run` trains one)"}
    current = next((v for v in versions if v.get("in_service")), versions[0])
    champion = str(current.get("champion", ""))
    candidates = {
        name: {k: m.get(k) for k in METRICS}
        for name, m in (current.get("metrics") or {}).items()
        if isinstance(m, dict)
    }
    history = []
    for v in reversed(versions):
        best = (v.get("metrics") or {}).get(v.get("champion", ""), {})
        history.append(
            {
                "version": v.get("version"),
                "prediction": v.get("prediction_name"),  # issue 3: several predictions side by side
                "created_at": v.get("created_at"),
                "champion": v.get("champion"),
                "in_service": v.get("in_service"),
                "published": (v.get("gate") or {}).get("published"),
                "gate": (v.get("gate") or {}).get("reason"),
                "auc": best.get("auc"),
                "lift_quality": best.get("lift_quality"),
            }
        )
    figures: dict[str, Any] = {}
    if candidates:
        labels = list(candidates)
        figures["candidates"] = charts.grouped_bars(
            labels,
            {m: [candidates[c].get(m) for c in labels] for m in ("auc", "lift_quality", "pr_auc")},
            "Champion and baselines on the validation window",
            "Candidate model",
        )
    if len(history) > 1:
        xs = [str(h["version"]) for h in history]
        figures["versions"] = charts.lines(
            {m: (xs, [h[m] for h in history]) for m in ("auc", "lift_quality")},
            "Validation quality of every saved version",
            "Model version",
            "Value",
        )
    curve_notes = _curve_figures(current, champion, figures)
    importance_note = _importance_figure(current, champion, figures)
    return {
        "problem": None,
        "path": str(model_settings.registry_path),
        "current": current,
        "champion": champion,
        "candidates": candidates,
        "history": list(reversed(history)),
        "figures": figures,
        "importance_note": importance_note,
        "curve_notes": curve_notes,
    }


def _importance_figure(meta: dict[str, Any], champion: str, figures: dict[str, Any]) -> str | None:
    """Add the champion's feature importance (or, for a champion without inputs to rank, the GBM candidate's) to
    ``figures``; return why none is shown, or None."""
    recorded = meta.get("feature_importance")
    if not isinstance(recorded, dict) or not recorded:
        return "not recorded for this model (it was saved before churnsync recorded feature importance)"
    owner = champion if isinstance(recorded.get(champion), dict) else "gbm"
    importance = recorded.get(owner)
    if not isinstance(importance, dict) or not importance:
        return f"not recorded for this model (its champion {champion or '?'} has no inputs to rank)"
    ranked = sorted(
        ((str(k), float(v)) for k, v in importance.items() if isinstance(v, int | float)), key=lambda kv: -kv[1]
    )
    title = "Feature importance (share of total"
    title += f"; the top 20 of {len(ranked)} inputs)" if len(ranked) > 20 else ")"
    ranked = ranked[:20]
    if owner != champion:
        title += f": {owner} candidate; the champion {champion} has no inputs to rank"
    figures["importance"] = charts.hbars([k for k, _ in ranked], [v for _, v in ranked], title)
    return None


def _report(report_dir: Path | None) -> dict[str, Any]:
    """The backtest report of ``churnsync evaluate`` (report.json), with its charts; ``problem`` when absent."""
    if report_dir is None:
        return {"problem": "start `churnsync serve` with --report DIR (the folder of `churnsync evaluate --out DIR`)"}
    file = report_dir / "report.json"
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"problem": f"no {file} yet: run `churnsync evaluate --out {report_dir}`"}
    except (OSError, ValueError) as exc:
        return {"problem": f"{file} cannot be read ({exc})"}
    if not isinstance(report, dict):
        return {"problem": f"{file} is not a churnsync evaluation report"}
    churn = {k: v for k, v in (report.get("churn") or {}).items() if isinstance(v, dict)}
    curves = {
        name: (entry["calibration"]["predicted"], entry["calibration"]["observed"])
        for name, entry in churn.items()
        if isinstance(entry.get("calibration"), dict) and "predicted" in entry["calibration"]
    }
    gains = {
        name: entry["gains"]["gains"]
        for name, entry in churn.items()
        if isinstance(entry.get("gains"), dict) and "gains" in entry["gains"]
    }
    figures: dict[str, Any] = {}
    if curves:
        figures["calibration"] = charts.calibration(curves)
    if gains:
        figures["gains"] = charts.gains(gains)
    conditional = (report.get("counts") or {}).get("conditional_expectation") or []
    if conditional:
        xs = [str(row.get("frequency")) for row in conditional]
        figures["counts"] = charts.lines(
            {
                "actual": (xs, [row.get("actual") for row in conditional]),
                "expected (BG/NBD)": (xs, [row.get("expected") for row in conditional]),
            },
            "Purchase days in the backtest window by past frequency",
            "Past purchase days",
            "Mean purchase days",
        )
    metrics = {name: {k: (entry.get("metrics") or {}).get(k) for k in METRICS} for name, entry in churn.items()}
    has_html = (report_dir / "report.html").is_file()
    return {"problem": None, "report": report, "metrics": metrics, "figures": figures, "html": has_html}
