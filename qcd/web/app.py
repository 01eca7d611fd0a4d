"""The dashboard: sites overview, operator view, study view, JSON API, login.

Every page has a JSON twin under ``/api`` (documented in ``/api/openapi.json``).
Viewers read everything; operators also acknowledge alerts. Overview pages show
institutions and stations only, never patient data (qcd stores none).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import logging
import secrets
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape

from qcd.audit import report
from qcd.audit.query import AuditFilters
from qcd.audit.resolution import BAND_FWHM_MM
from qcd.config import HttpSettings
from qcd.db.engine import Database
from qcd.web import aggregates, records, stow, svg
from qcd.web.auth import Authenticator, Principal, csrf_ok
from qcd.web.images import (
    SAGITTAL_MM_KEYS,
    VolumeCache,
    contour_points,
    draw_contour,
    encode_png,
    key_images,
    to_uint8,
)
from qcd.web.http import MAX_BODY
from qcd.web.images import plane as take_plane
from qcd.web.openapi import openapi
from qcd.web.readdb import reader
from qcd.web.routing import Request, Response, Router

if TYPE_CHECKING:
    from qcd.ingest.service import IngestService

LOGGER = logging.getLogger(__name__)
HERE = Path(__file__).parent
SESSION_COOKIE = "qcd_session"
LOGIN_COOKIE = "qcd_login"
UID = r"[0-9.]{1,64}"
MAX_DAYS = 3660
WEEKLY_AFTER_DAYS = 62
"""Longer periods chart weekly points (daily ones are too few series each to read)."""


class BadRequest(ValueError):
    """A parameter the user can fix (answered 400 with the message)."""


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def val(value: object) -> str:
    """A finding's value for people: floats to 3 significant digits."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


class Dashboard:
    """Turns a :class:`Request` into a :class:`Response`; stateless apart from caches."""

    def __init__(self, db: Database, spool_root: str | Path, settings: HttpSettings,
                 ingest: IngestService | None = None) -> None:
        self.db = db
        self.ingest = ingest
        """The C-STORE path, for STOW-RS (``[http] stow_enabled``); None: no STOW-RS."""
        """For the writes: sessions, acknowledgements."""
        self.read = reader(db)
        """For everything else (never takes SQLite's write lock)."""
        self.spool_root = Path(spool_root)
        self.settings = settings
        self.auth = Authenticator(db, settings.auth, settings.session_hours,
                                  settings.proxy_user_header, settings.proxy_default_role,
                                  settings.proxy_trusted_networks)
        self.volumes = VolumeCache()
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"),
                               autoescape=select_autoescape(["html"]))
        self.env.filters["pct"] = pct
        self.env.filters["val"] = val
        self.router = r = Router()
        r.add("GET", "/", lambda req, who: Response.redirect("/sites"))
        r.add("GET", "/login", self.login_form, auth=False)
        r.add("POST", "/login", self.login, auth=False)
        r.add("POST", "/logout", self.logout)
        r.add("GET", "/static/qcd.css", self.css, auth=False)
        r.add("GET", "/api/openapi.json", lambda req, who: Response.json(openapi()), auth=False)
        r.add("GET", "/sites", self.sites_page)
        r.add("GET", "/sites.csv", self.sites_csv)
        r.add("GET", "/operator", self.operator_page)
        r.add("POST", r"/alerts/(?P<alert_id>\d+)/ack", self.ack_form)
        r.add("GET", f"/study/(?P<study_uid>{UID})", self.study_page)
        r.add("GET", f"/study/(?P<study_uid>{UID})/series/(?P<series_uid>{UID})/"
                     r"(?P<kind>axial|sagittal|contour)/(?P<index>\d{1,5})\.png", self.key_png)
        r.add("GET", "/api/me", lambda req, who: Response.json(
            {"name": who.name, "role": who.role.value}))
        r.add("GET", "/api/sites", self.api_sites)
        r.add("GET", "/api/sites.csv", self.sites_csv)
        r.add("GET", "/api/trends", self.api_trends)
        r.add("GET", "/api/stations", lambda req, who: Response.json(records.stations(self.read)))
        r.add("GET", "/api/series", self.api_series)
        r.add("GET", "/api/alerts", self.api_alerts)
        r.add("POST", r"/api/alerts/(?P<alert_id>\d+)/ack", self.api_ack)
        r.add("GET", f"/api/studies/(?P<study_uid>{UID})", self.api_study)
        r.add("GET", "/harmonisation", self.harmonisation_page)
        r.add("GET", "/harmonisation.csv", self.harmonisation_csv)
        r.add("GET", "/api/harmonisation", self.api_harmonisation)
        r.add("GET", "/api/harmonisation.csv", self.harmonisation_csv)
        if settings.stow_enabled and ingest is not None:
            r.add("POST", "/dicom-web/studies", self.stow)
            r.add("POST", f"/dicom-web/studies/(?P<study_uid>{UID})", self.stow)

    def close(self) -> None:
        if self.read is not self.db:
            self.read.dispose()

    # ------------------------------------------------------------------ dispatch

    def handle(self, req: Request) -> Response:
        found = self.router.match(req.method, req.path)
        api = req.path.startswith("/api/")
        if isinstance(found, int):
            return self._error(req, found, "not found" if found == 404 else "method not allowed")
        route, kwargs = found
        who: Principal | None = None
        if route.auth:
            who = self.auth.resolve(req.headers, req.cookies.get(SESSION_COOKIE), req.client)
            if who is None:
                if api or req.method != "GET":
                    return Response.json({"error": "authentication required"}, 401)
                return Response.redirect("/login?next=" + quote(req.target, safe=""))
        try:
            return route.handler(req, who, **kwargs)
        except BadRequest as exc:
            return self._error(req, 400, str(exc))
        except Exception:
            LOGGER.exception("dashboard error on %s %s", req.method, req.path)
            return self._error(req, 500, "internal error (see the qcd log)")

    def _error(self, req: Request, status: int, message: str) -> Response:
        if req.path.startswith(("/api/", "/dicom-web/")):
            return Response.json({"error": message}, status)
        return Response.html(self.env.get_template("error.html").render(
            status=status, message=message, who=None), status)

    def _page(self, name: str, who: Principal | None, **context: Any) -> Response:
        return Response.html(self.env.get_template(name).render(who=who, **context))

    # ------------------------------------------------------------------ login

    def css(self, req: Request, who: None) -> Response:
        return Response(200, (HERE / "static" / "qcd.css").read_bytes(), "text/css")

    def login_form(self, req: Request, who: None, error: str = "", status: int = 200
                   ) -> Response:
        if self.settings.auth == "proxy":
            return self._error(req, 404, "login is done by the reverse proxy")
        token = secrets.token_urlsafe(24)
        resp = Response.html(self.env.get_template("login.html").render(
            who=None, csrf=token, next=_safe_next(req.query.get("next", "")), error=error),
            status)
        resp.headers.append(("Set-Cookie", self._cookie(LOGIN_COOKIE, token, 600)))
        return resp

    def login(self, req: Request, who: None) -> Response:
        form = req.form()
        expected = req.cookies.get(LOGIN_COOKIE, "")
        if not expected or form.get("csrf") != expected:
            return self.login_form(req, None, "Your login form expired; please try again.",
                                   400)
        token = self.auth.login(form.get("username", ""), form.get("password", ""))
        if token is None:
            LOGGER.info("web login failed for a user")
            return self.login_form(req, None, "Unknown user or wrong password.", 401)
        resp = Response.redirect(_safe_next(form.get("next", "")) or "/sites")
        resp.headers.append(("Set-Cookie", self._cookie(
            SESSION_COOKIE, token, int(self.settings.session_hours * 3600))))
        resp.headers.append(("Set-Cookie", self._cookie(LOGIN_COOKIE, "", 0)))
        return resp

    def logout(self, req: Request, who: Principal) -> Response:
        if not csrf_ok(who, req.form().get("csrf")):
            return self._error(req, 403, "missing or wrong CSRF token")
        if who.session_token:
            self.auth.logout(who.session_token)
        resp = Response.redirect("/login")
        resp.headers.append(("Set-Cookie", self._cookie(SESSION_COOKIE, "", 0)))
        return resp

    def _cookie(self, name: str, value: str, max_age: int) -> str:
        secure = "; Secure" if self.settings.secure_cookies else ""
        return f"{name}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict{secure}"

    # ------------------------------------------------------------------ sites

    def _period(self, req: Request) -> aggregates.Period:
        q = req.query
        try:
            if q.get("from") or q.get("to"):
                start = dt.datetime.strptime(q.get("from", ""), "%Y-%m-%d")
                end = dt.datetime.strptime(q.get("to", ""), "%Y-%m-%d") + dt.timedelta(days=1)
                if end <= start or (end - start).days > MAX_DAYS:
                    raise ValueError
                return aggregates.Period(start, end)
            days = int(q.get("days") or 30)
            if not 1 <= days <= MAX_DAYS:
                raise ValueError
        except ValueError:
            raise BadRequest("period: give days=1-3660, or from=YYYY-MM-DD&to=YYYY-MM-DD "
                             "(to not before from)") from None
        return aggregates.Period.last_days(days)

    def api_sites(self, req: Request, who: Principal) -> Response:
        period = self._period(req)
        return Response.json({"period": period.to_dict(),
                              "sites": aggregates.site_table(self.read, period)})

    def api_trends(self, req: Request, who: Principal) -> Response:
        period = self._period(req)
        bucket = req.query.get("bucket", "day")
        if bucket not in ("day", "week"):
            raise BadRequest("bucket: day or week")
        return Response.json({"period": period.to_dict(), "bucket": bucket,
                              "days": aggregates.trends(self.read, period, req.query.get("site"),
                                                        bucket)})

    def sites_csv(self, req: Request, who: Principal) -> Response:
        period = self._period(req)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(aggregates.CSV_COLUMNS)
        writer.writerows(aggregates.csv_rows(aggregates.site_table(self.read, period), period))
        name = f"qcd-compliance-{period.start:%Y%m%d}-{period.end:%Y%m%d}.csv"
        return Response(200, buf.getvalue().encode(), "text/csv; charset=utf-8",
                        [("Content-Disposition", f'attachment; filename="{name}"')])

    def sites_page(self, req: Request, who: Principal) -> Response:
        period = self._period(req)
        table = aggregates.site_table(self.read, period)
        bucket = "week" if period.end - period.start > dt.timedelta(days=WEEKLY_AFTER_DAYS) \
            else "day"
        days = aggregates.trends(self.read, period, bucket=bucket)
        compliance: dict[str, list[tuple[str, float | None]]] = defaultdict(list)
        rescan: dict[str, list[tuple[str, float | None]]] = defaultdict(list)
        volume: dict[str, list[tuple[str, float | None]]] = defaultdict(list)
        for d in days:
            compliance[d["site"]].append((d["day"], d["earl_compliant_rate"]))
            rescan[d["site"]].append((d["day"], d["rescan_rate"]))
            volume[d["site"]].append((d["day"], float(d["series_analysed"])))
        peak = max([v for pts in volume.values() for _, v in pts if v] or [1.0])
        charts = {
            "earl": svg.stacked_bars(
                [(f"{s['site']} / {st['station']}", st["earl"]["counts"])
                 for s in table for st in s["stations"] if st["earl"]["total"]],
                aggregates.EARL_CLASSES, "EARL class by scanner"),
            "compliance": svg.line_chart(compliance, f"EARL-compliant share per {bucket} "
                                                     "and site"),
            "rescan": svg.line_chart(rescan, f"Motion rescan rate per {bucket} and site"),
            "volume": svg.line_chart(volume, f"Series analysed per {bucket} and site",
                                     y_max=peak, percent=False),
            "la": {s["site"]: svg.histogram(s["la_volume"]["bins_ml"],
                                            s["la_volume"]["histogram"],
                                            f"LA volume, {s['site']}") for s in table},
        }
        query = "&".join(f"{k}={quote(v)}" for k, v in req.query.items())
        return self._page("sites.html", who, table=table, period=period, charts=charts,
                          days=req.query.get("days", "" if req.query.get("from") else "30"),
                          query=query, classes=aggregates.EARL_CLASSES)

    # ------------------------------------------------------------------ operator

    def operator_page(self, req: Request, who: Principal) -> Response:
        station = req.query.get("station") or None
        return self._page(
            "operator.html", who, station=station, stations=records.stations(self.read),
            open_alerts=records.alerts(self.read, "OPEN", station),
            acked=records.alerts(self.read, "ACKNOWLEDGED", station, limit=20),
            series=records.recent_series(self.read, station), message=req.query.get("msg"))

    def ack_form(self, req: Request, who: Principal, alert_id: str) -> Response:
        form = req.form()
        if not csrf_ok(who, form.get("csrf")):
            return self._error(req, 403, "missing or wrong CSRF token")
        if not who.can_operate:
            return self._error(req, 403, "only operators may acknowledge alerts")
        try:
            records.acknowledge(self.db, int(alert_id), form.get("name") or who.name,
                                form.get("comment", ""))
        except records.AckError as exc:
            return self._error(req, exc.status, str(exc))
        LOGGER.info("alert %s acknowledged by web user", alert_id)
        back = "/operator" + (f"?station={quote(form['station'])}" if form.get("station")
                              else "")
        return Response.redirect(back)

    def api_series(self, req: Request, who: Principal) -> Response:
        return Response.json(records.recent_series(self.read, req.query.get("station") or None,
                                                   _limit(req, 50)))

    def api_alerts(self, req: Request, who: Principal) -> Response:
        state = req.query.get("state", "OPEN").upper()
        if state not in ("OPEN", "ACKNOWLEDGED", "ALL"):
            raise BadRequest("state: OPEN, ACKNOWLEDGED or ALL")
        return Response.json(records.alerts(self.read, None if state == "ALL" else state,
                                            req.query.get("station") or None,
                                            _limit(req, 100)))

    def api_ack(self, req: Request, who: Principal, alert_id: str) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise BadRequest('send a JSON object {"name": ..., "comment": ...}')
        if not csrf_ok(who, req.headers.get("x-csrf-token")):
            return Response.json({"error": "missing or wrong X-CSRF-Token"}, 403)
        if not who.can_operate:
            return Response.json({"error": "only operators may acknowledge alerts"}, 403)
        try:
            row = records.acknowledge(self.db, int(alert_id), str(body.get("name") or who.name),
                                      str(body.get("comment") or ""))
        except records.AckError as exc:
            return Response.json({"error": str(exc)}, exc.status)
        return Response.json(row)

    # ------------------------------------------------------------------ study

    def api_study(self, req: Request, who: Principal, study_uid: str) -> Response:
        data = records.study(self.read, study_uid)
        if data is None:
            return Response.json({"error": "no such study"}, 404)
        for s in data["series"]:
            s["viewer_url"] = self._viewer(study_uid, s["series_uid"])
        return Response.json(data)

    def _viewer(self, study_uid: str, series_uid: str | None = None) -> str | None:
        template = self.settings.viewer_url_template
        if not template:
            return None
        return template.replace("{study_uid}", study_uid).replace("{series_uid}",
                                                                  series_uid or "")

    def study_page(self, req: Request, who: Principal, study_uid: str) -> Response:
        data = records.study(self.read, study_uid)
        if data is None:
            return self._error(req, 404, "no such study")
        for s in data["series"]:
            s["viewer_url"] = self._viewer(study_uid, s["series_uid"])
            files = records.series_files(self.read, s["series_uid"]) or []
            spacing = self._x_spacing(s["series_uid"], files, s["findings"])
            s["key_images"] = [
                {"label": k.label,
                 "src": f"/study/{study_uid}/series/{s['series_uid']}/"
                        f"{'contour' if k.contour else k.plane}/{k.index}.png"}
                for k in key_images(s["findings"], len(files) or None, spacing)]
        return self._page("study.html", who, study=data,
                          viewer_url=self._viewer(study_uid))

    def _x_spacing(self, series_uid: str, files: list[str], findings: list[dict[str, Any]]
                   ) -> float | None:
        """Column spacing (mm) of the series, needed only to place sagittal planes given
        in mm (EARL); loading the volume here warms the cache for its key images."""
        if not files or not any(k in (f.get("payload") or {}) for f in findings
                                for k in SAGITTAL_MM_KEYS):
            return None
        paths = [self.spool_root / f for f in files]
        if not all(p.is_file() for p in paths):
            return None
        return self.volumes.get(series_uid, paths)[1][2]

    def key_png(self, req: Request, who: Principal, study_uid: str, series_uid: str,
                kind: str, index: str) -> Response:
        files = records.series_files(self.read, series_uid)
        if not files:
            return self._error(req, 404, "no instances of that series in the spool")
        paths = [self.spool_root / f for f in files]
        if not all(p.is_file() for p in paths):
            return self._error(req, 404, "the series' files are no longer in the spool")
        volume, _ = self.volumes.get(series_uid, paths)
        try:
            image = to_uint8(take_plane(volume, "axial" if kind == "contour" else kind,
                                        int(index)))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if kind == "contour":
            data = records.study(self.read, study_uid) or {"series": []}
            findings = [f for s in data["series"] if s["series_uid"] == series_uid
                        for f in s["findings"]]
            png = encode_png(draw_contour(image, *contour_points(findings, int(index))))
        else:
            png = encode_png(image)
        return Response(200, png, "image/png")


    # ------------------------------------------------------------------ STOW-RS

    def body_limit(self, req: Request) -> int:
        """Largest request body (the HTTP server asks before reading it): STOW-RS
        uploads with credentials may reach ``stow_max_bytes``, everything else 64 KiB."""
        if (self.ingest is None or not self.settings.stow_enabled or req.method != "POST"
                or not req.path.startswith("/dicom-web/studies")):
            return MAX_BODY
        if not (req.headers.get("authorization") or req.cookies.get(SESSION_COOKIE)
                or self.settings.auth == "proxy"):
            return MAX_BODY  # unauthenticated uploads are not read in full
        return self.settings.stow_max_bytes

    def stow(self, req: Request, who: Principal, study_uid: str | None = None) -> Response:
        if not csrf_ok(who, req.headers.get("x-csrf-token")):
            return Response.json({"error": "missing or wrong X-CSRF-Token"}, 403)
        if not who.can_operate:
            return Response.json({"error": "only operators may store instances"}, 403)
        if len(req.body) > self.settings.stow_max_bytes:
            return Response.json({"error": "request body too large"}, 413)
        assert self.ingest is not None  # the route exists only with an ingest service
        try:
            parts = stow.parse_multipart(req.headers.get("content-type", ""), req.body)
        except stow.StowRequestError as exc:
            return Response.json({"error": str(exc)}, exc.http_status)
        results = stow.store_parts(self.ingest, parts, study_uid)
        code, body = stow.response(results)
        LOGGER.info("STOW-RS by web user: %d part(s), %d stored", len(results),
                    sum(r.status == 0 for r in results))
        resp = Response.json(body, code)
        resp.content_type = stow.DICOM_JSON
        return resp

    # ------------------------------------------------------------------ harmonisation

    def _audit_filters(self, req: Request) -> tuple[AuditFilters | None, dict[str, str]]:
        q = req.query
        given = {k: q[k] for k in ("from", "to", "site", "station") if q.get(k)}
        if not given:
            return None, {}
        try:
            start = dt.datetime.strptime(given["from"], "%Y-%m-%d").date() \
                if "from" in given else None
            end = dt.datetime.strptime(given["to"], "%Y-%m-%d").date() if "to" in given else None
        except ValueError:
            raise BadRequest("from/to: study dates as YYYY-MM-DD") from None
        if start and end and end < start:
            raise BadRequest("to is before from")
        return AuditFilters(date_from=start, date_to=end, modality="",
                            stations=(given["station"],) if "station" in given else (),
                            institutions=(given["site"],) if "site" in given else ()), given

    def _harmonisation(self, req: Request) -> tuple[list[report.SeriesRow],
                                                    list[report.ScannerRow], dict[str, str]]:
        filters, given = self._audit_filters(req)
        series = report.series_rows(self.read, filters)
        return series, report.scanner_rows(series), given

    def api_harmonisation(self, req: Request, who: Principal) -> Response:
        series, scanners, given = self._harmonisation(req)
        data: dict[str, Any] = {"filters": given,
                                "scanners": [dataclasses.asdict(r) for r in scanners],
                                "derivation": harmonisation_method()}
        if req.query.get("series") in ("1", "true", "yes"):
            data["series"] = [dataclasses.asdict(r) for r in series]
        return Response.json(data)

    def harmonisation_csv(self, req: Request, who: Principal) -> Response:
        series, scanners, _ = self._harmonisation(req)
        rows: list[Any] = list(series if req.query.get("series") in ("1", "true", "yes")
                               else scanners)
        flat = [report._flat(r) for r in rows]
        buf = io.StringIO()
        if flat:
            writer = csv.DictWriter(buf, fieldnames=list(flat[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(flat)
        name = "qcd-harmonisation-series.csv" if rows is series else "qcd-harmonisation.csv"
        return Response(200, buf.getvalue().encode(), "text/csv; charset=utf-8",
                        [("Content-Disposition", f'attachment; filename="{name}"')])

    def harmonisation_page(self, req: Request, who: Principal) -> Response:
        series, scanners, given = self._harmonisation(req)
        non_compliant = [r for r in series if r.earl_class == "clinical"]
        query = "&".join(f"{k}={quote(v)}" for k, v in given.items())
        return self._page("harmonisation.html", who, scanners=scanners,
                          series=non_compliant[:HARMONISATION_SERIES_SHOWN],
                          n_non_compliant=len(non_compliant), given=given, query=query,
                          classes=report.CLASSES, method=harmonisation_method())


HARMONISATION_SERIES_SHOWN = 300
"""Non-compliant series listed on the page (the CSV has them all)."""


def harmonisation_method() -> dict[str, Any]:
    """How the extra smoothing is derived (:mod:`qcd.audit.report`), for people and the API."""
    return {
        "r0_psf_mm": report.R0_PSF_MM,
        "r0_no_psf_mm": report.R0_NO_PSF_MM,
        "default_voxel_mm": report.DEFAULT_VOXEL_MM,
        "band_fwhm_mm": {label: {f"{voxel:g}": list(rng) for voxel, rng in table.items()}
                         for label, table in BAND_FWHM_MM.items()},
        "steps": [
            "Effective resolution: f_eff = sqrt(r0^2 + g^2), g = the post-filter FWHM in the "
            "header (ConvolutionKernel), r0 = the assumed resolution of the unfiltered "
            "reconstruction (3.5 mm with PSF, 4.5 mm without); no filter in the header: no "
            "estimate.",
            "Band resolution: sweeping a Gaussian PSF of FWHM f through the NEMA IEC phantom "
            "model that labels the training data gives, per voxel size, the range "
            "[t_lo, t_hi] whose recovery coefficients lie in the band (EARL2 with PSF "
            "overshoot 0.15; both with noise COV 5 %).",
            "Extra filter: an extra Gaussian of FWHM e gives sqrt(f_eff^2 + e^2), so the band "
            "is reached for e in [sqrt(t_lo^2 - f_eff^2), sqrt(t_hi^2 - f_eff^2)]; the "
            "recommendation aims at the band centre. Images already smoother than t_hi "
            "cannot be brought into the band by smoothing.",
            "Per scanner: the median recommendation over its series classed clinical "
            "(non-compliant) that have a header-based estimate (extra_estimated).",
        ],
    }


def _limit(req: Request, default: int) -> int:
    try:
        value = int(req.query.get("limit") or default)
    except ValueError:
        raise BadRequest("limit: an integer 1-1000") from None
    if not 1 <= value <= 1000:
        raise BadRequest("limit: an integer 1-1000")
    return value


def _safe_next(target: str) -> str:
    """Only same-site paths (no open redirect), percent-encoded: it becomes a Location
    header, where CR/LF would inject headers and non-Latin-1 text cannot be sent."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return quote(target, safe=_URL_SAFE)
    return ""


_URL_SAFE = "/?&=%#:@!$'()*+,;~"
"""Left as they are by :func:`_safe_next` (path and query syntax, existing escapes)."""
