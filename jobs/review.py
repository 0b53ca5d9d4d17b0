"""`allray review`: the web app over an infer output (FastAPI on uvicorn, Jinja2 pages, little JS).

Pages are rendered on the server; the one script (static/review.js) sends corrections as POSTs and
puts the server-rendered counts back in the page. Safety, in the order requests meet it:
- Host header: only the served address (or localhost) on loopback, so a rebound DNS name cannot read pages;
- token: off 127.0.0.1 every request needs the token cookie (set from ?token= on the first visit), else 401;
- CSRF: every POST carries a token bound to the browser's session cookie by an HMAC of a server secret;
- Jinja2 autoescape for everything from the data, and a Content-Security-Policy that runs no inline script.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from pathlib import Path
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

import pipeline.review
from pipeline.review.cells import CLASS_TITLES, REVIEW_CLASSES, REVIEW_KEYS, ReviewConfig, load_report
from pipeline.review.counts import count_patient, current_classes, unsure_mask
from pipeline.review.exports import (
    remove_signed,
    reviewed_labels,
    signed_record,
    templates,
    write_audit_csv,
    write_labels_csv,  # fmt: skip
    write_reviewed_csv,
    write_signed,
)
from pipeline.review.store import ACTION_CORRECT, ACTION_UNDO, ReviewRefused, ReviewStore, now

TOKEN_COOKIE, SESSION_COOKIE, REVIEWER_COOKIE = "allray_token", "allray_session", "allray_reviewer"
CSP = ("default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")  # fmt: skip
STATIC = Path(pipeline.review.__file__).resolve().parent / "static"
AUDIT_SHOWN = 100  # newest audit rows on a patient's page; all of them in --export-audit
STATUS_NEW, STATUS_IN_REVIEW, STATUS_SIGNED = "not started", "in review", "signed off"


class CsrfRefused(Exception):
    """A POST without this browser's CSRF token."""


def open_review(config: ReviewConfig):
    """The report and its review database (created when missing; refused when it belongs to another report)."""
    report = load_report(config.report)
    return report, ReviewStore(config.db_url, report.fingerprint, str(report.path.resolve()))


class Guard:
    """ASGI middleware in front of every request: Host check, token, session cookie, security headers.

    Plain ASGI rather than Starlette's BaseHTTPMiddleware, which costs milliseconds a request."""

    def __init__(self, app, config: ReviewConfig, token: str, csrf_for, allowed_hosts: set[str]):
        self.app, self.config, self.token = app, config, token
        self.csrf_for, self.allowed_hosts = csrf_for, allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        if not self.config.needs_token and request.headers.get("host", "") not in self.allowed_hosts:
            return await PlainTextResponse("unexpected Host header", status_code=400)(scope, receive, send)
        if self.config.needs_token:
            given = request.query_params.get("token")
            if given and hmac.compare_digest(given, self.token) and request.method == "GET":
                resp = RedirectResponse(request.url.path, status_code=303)
                resp.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                return await resp(scope, receive, send)
            cookie = request.cookies.get(TOKEN_COOKIE, "")
            if not (cookie and hmac.compare_digest(cookie, self.token)):
                return await PlainTextResponse(
                    "401: this review server needs its token: open the URL it printed at start (with ?token=...)",
                    status_code=401,
                )(scope, receive, send)
        if request.method not in ("GET", "HEAD", "POST"):
            return await PlainTextResponse("405: method not allowed", status_code=405)(scope, receive, send)
        session = request.cookies.get(SESSION_COOKIE) or ""
        new_session = not session
        session = session or secrets.token_urlsafe(24)
        scope.setdefault("state", {}).update(session=session, csrf=self.csrf_for(session))
        extra = Response()
        if new_session:
            extra.set_cookie(SESSION_COOKIE, session, httponly=True, samesite="strict")
        extra.headers.update({"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                              "Referrer-Policy": "no-referrer"})  # fmt: skip
        added = [(k, v) for k, v in extra.raw_headers if k not in (b"content-length",)]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(config: ReviewConfig, report=None, store=None) -> FastAPI:
    """The review app for one report."""
    if report is None or store is None:
        report, store = open_review(config)
    secret = secrets.token_bytes(32)
    token = config.token
    app = FastAPI(title="allray review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.report, app.state.store, app.state.config = report, store, config
    allowed_hosts = {f"{h}:{config.port}" for h in ("127.0.0.1", "localhost", config.host)}

    def csrf_for(session: str) -> str:
        return hmac.new(secret, session.encode(), hashlib.sha256).hexdigest()

    app.add_middleware(Guard, config=config, token=token, csrf_for=csrf_for, allowed_hosts=allowed_hosts)

    async def require_csrf(request: Request) -> None:
        """Dependency of every POST: the form's (or X-CSRF-Token header's) token must match this browser's session."""
        session = request.cookies.get(SESSION_COOKIE) or ""
        sent = request.headers.get("x-csrf-token") or str((await request.form()).get("csrf", ""))
        if not (session and sent and hmac.compare_digest(sent, csrf_for(session))):
            raise CsrfRefused()

    @app.exception_handler(CsrfRefused)
    async def csrf_refused(request: Request, err: CsrfRefused):
        return PlainTextResponse("403: missing or wrong CSRF token; reload the page", status_code=403)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def counts(pid: str, decisions=None):
        cells = report.patients[pid]
        d = store.decisions(pid) if decisions is None else decisions
        return count_patient(cells, d, config.unsure_below, report.blast_alert_pct, report.min_cells)

    counts_cache: dict[str, tuple[int, object]] = {}  # patient -> (revision, counts): the worklist recounts changes

    def counts_at(pid: str, revision: int):
        """A patient's counts at `revision` (the database's, so writes of other servers are seen too)."""
        hit = counts_cache.get(pid)
        if hit is None or hit[0] != revision:
            hit = (revision, before_review(pid) if revision == 0 else counts(pid))
            counts_cache[pid] = hit
        return hit[1]

    @functools.cache
    def before_review(pid: str):
        return count_patient(report.patients[pid], {}, config.unsure_below, report.blast_alert_pct, report.min_cells)

    def render(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
        html = templates.get_template(name).render(csrf=request.state.csrf, titles=CLASS_TITLES, **ctx)
        return HTMLResponse(html, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    def worklist(request: Request):
        signoffs, revisions = store.signoffs(), store.revisions()
        rows = []
        for pid, cells in report.patients.items():
            c = counts_at(pid, revisions.get(pid, 0))
            status = STATUS_SIGNED if pid in signoffs else STATUS_IN_REVIEW if pid in revisions else STATUS_NEW
            rows.append(
                {"id": pid, "url": "/patient?" + urlencode({"id": pid}), "status": status, "c": c, "n": len(cells.keys)}
            )
        return render(request, "worklist.html", rows=rows, report=report, config=config)

    def patient_page(request: Request, pid: str, page: int = 0, error: str = "", status: int = 200):
        cells = report.patients[pid]
        view = store.patient_view(pid, AUDIT_SHOWN)
        decisions, revision, signed = view["decisions"], view["revision"], view["signed"]
        c = counts(pid, decisions)
        before = before_review(pid)
        classes = current_classes(cells, decisions)
        unsure = unsure_mask(cells, decisions, config.unsure_below)
        galleries = {"unsure": [], **{k: [] for k in REVIEW_CLASSES}}
        for i, key in enumerate(cells.keys):
            galleries.setdefault("unsure" if unsure[i] else classes[i], []).append(
                {"key": key, "cls": classes[i], "conf": float(cells.confidence[i]), "pred": cells.predicted[i],
                 "decided": key in decisions})  # fmt: skip
        size = config.page_size
        n_pages = max(1, -(-max(len(v) for v in galleries.values()) // size))
        page = min(max(0, page), n_pages - 1)
        shown = {k: v[page * size : (page + 1) * size] for k, v in galleries.items()}
        return render(
            request,
            "patient.html",
            status=status,
            pid=pid,
            c=c,
            before=before,
            signed=signed,
            galleries=shown,
            totals={k: len(v) for k, v in galleries.items()},
            revision=revision,
            error=error,
            audit=view["audit"],
            n_audit=view["n_audit"],
            keys=REVIEW_KEYS,
            page=page,
            n_pages=n_pages,
            qs=lambda p: urlencode({"id": pid, "page": p}),
            config=config,
            report=report,
            has_classes=report.has_classes,
            reviewer=request.cookies.get(REVIEWER_COOKIE, config.reviewer),
        )

    def known(pid: str) -> None:
        if pid not in report.patients:
            raise KeyError(pid)

    @app.exception_handler(KeyError)
    async def unknown_patient(request: Request, err: KeyError):
        return PlainTextResponse(f"404: no patient or cell {err.args[0]!r} in this report", status_code=404)

    @app.get("/patient", response_class=HTMLResponse)
    def patient(request: Request, id: str, page: int = 0):  # noqa: A002 - the query parameter's name
        known(id)
        return patient_page(request, id, page)

    @app.get("/crop")
    def crop(key: str):
        data = report.crop(key)
        if data is None:
            raise KeyError(key)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/cell", dependencies=[Depends(require_csrf)])
    def cell(request: Request, patient: str = Form(...), key: str = Form(...), cls: str = Form(""),
             reviewer: str = Form(""), undo: str = Form("")):  # fmt: skip
        known(patient)
        cells = report.patients[patient]
        try:
            i = cells.keys.index(key)
        except ValueError:
            raise KeyError(key) from None
        if not reviewer.strip():
            return JSONResponse({"error": "enter your name (reviewer) first"}, status_code=400)
        try:
            before, revision, decisions = store.set_class(patient, key, cls, reviewer.strip(),
                                                          ACTION_UNDO if undo else ACTION_CORRECT,
                                                          before=cells.predicted[i])  # fmt: skip
        except ReviewRefused as err:
            return JSONResponse({"error": str(err)}, status_code=409)
        c = counts(patient, decisions)
        html = templates.get_template("counts.html").render(c=c, titles=CLASS_TITLES, has_classes=report.has_classes)
        now_cls = decisions.get(key, cells.predicted[i])
        unsure = bool(cells.confidence[i] < config.unsure_below) and key not in decisions
        resp = JSONResponse({"key": key, "from": before, "cls": now_cls, "unsure": unsure, "revision": revision,
                             "decided": key in decisions, "counts_html": html, "blast_pct": c.blast_pct,
                             "n_unsure": c.n_unsure})  # fmt: skip
        resp.set_cookie(REVIEWER_COOKIE, reviewer.strip()[:100], httponly=True, samesite="strict")
        return resp

    @app.post("/signoff", response_class=HTMLResponse, dependencies=[Depends(require_csrf)])
    def signoff(request: Request, patient: str = Form(...), reviewer: str = Form(""), revision: int = Form(...)):
        known(patient)
        decisions = store.decisions(patient)
        c = counts(patient, decisions)
        try:
            if not reviewer.strip():
                raise ReviewRefused("a sign-off needs the reviewer's name")
            if c.n_unsure:
                raise ReviewRefused(
                    f"{c.n_unsure} cell(s) are still in the unidentified bin: move or confirm each "
                    "one before signing off"
                )
            record = signed_record(report, patient, before_review(patient), c, reviewer.strip(), now())
            store.sign_off(patient, reviewer.strip(), revision, record)
        except ReviewRefused as err:
            return patient_page(request, patient, error=str(err), status=409)
        write_signed(report.path, record)
        write_reviewed_csv(report.path, store.signoffs())
        return RedirectResponse("/patient?" + urlencode({"id": patient}), status_code=303)

    @app.post("/reopen", response_class=HTMLResponse, dependencies=[Depends(require_csrf)])
    def reopen(request: Request, patient: str = Form(...), reviewer: str = Form(""), reason: str = Form("")):
        known(patient)
        try:
            store.reopen(patient, reviewer.strip(), reason)
        except ReviewRefused as err:
            return patient_page(request, patient, error=str(err), status=409)
        remove_signed(report.path, patient)
        write_reviewed_csv(report.path, store.signoffs())
        return RedirectResponse("/patient?" + urlencode({"id": patient}), status_code=303)

    return app


def review_url(config: ReviewConfig) -> str:
    """The address a reviewer opens (with the token where one is needed)."""
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    url = f"http://{host}:{config.port}/"
    return url + (f"?token={config.token}" if config.needs_token else "")


def serve(config: ReviewConfig, echo=print) -> None:
    """Serve the review app until interrupted."""
    import uvicorn

    if config.needs_token and not config.token:
        config = ReviewConfig(**{**config.__dict__, "token": secrets.token_urlsafe(24)})
    report, store = open_review(config)
    app = create_app(config, report, store)
    n = sum(len(p.keys) for p in report.patients.values())
    echo(f"review: {len(report.patients)} patients, {n} cells, database {config.db_url}")
    echo(f"open {review_url(config)}" + ("  (the token is required: this server is not on 127.0.0.1 only)"
                                         if config.needs_token else ""))  # fmt: skip
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")


def export(config: ReviewConfig, labels: str | None = None, audit: str | None = None) -> list[str]:
    """Write the labels and/or audit CSVs of a report's review; returns what to tell the user."""
    report = load_report(config.report)
    default_db = Path(config.report) / "review.sqlite"
    if not config.db and not default_db.exists():
        decisions, signed, rows = {}, set(), []  # never reviewed: nothing to export (headers only)
    else:
        store = ReviewStore(config.db_url, report.fingerprint, str(report.path.resolve()))
        try:
            decisions, signed, rows = store.decisions(), set(store.signoffs()), store.audit()
        finally:
            store.close()
    lines = []
    if labels:
        n = write_labels_csv(labels, reviewed_labels(report, decisions, signed), report.has_classes)
        lines.append(f"review: {n} reviewed cells -> {labels} (use: allray ingest SRC --labels {labels})")
    if audit:
        n = write_audit_csv(audit, rows)
        lines.append(f"review: {n} audit rows -> {audit}")
    return lines
