"""The retrain webhook: Alertmanager's notifications (payload version 4) start the model's training.

:func:`parse_notification` checks a payload and names the field at fault. :class:`RetrainWebhook` decides,
for each firing alert that carries a ``model`` label:

- a duplicate (same groupKey, fingerprint and startsAt as a stored row: a repeated or retried
  notification) does nothing; the registry database's unique key decides, so replicas agree;
- a model whose last run started less than ``cooldown`` ago is skipped (``cooldown``);
- a model with a run still in flight is skipped (``in_flight``);
- otherwise the launcher starts a training run on a thread of its own, so Alertmanager has its 2xx
  at once; the row records ``started`` and the run id, or ``failed`` and why.

Resolved alerts and resolved notifications are ignored. The launcher is passed in: the CLI's starts
the KFP training pipeline (``kfp.Client`` when a pipeline host is set, ``kfp.local`` otherwise), so
this module depends on neither. :func:`serve_webhook` serves it over HTTP: ``POST /alerts``,
``GET /healthz``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from modelyard.errors import InvalidInput
from modelyard.registry.tables import RetrainTrigger

log = logging.getLogger(__name__)

PAYLOAD_VERSION = "4"
MAX_BODY_BYTES = 4 * 1024 * 1024
MODEL_LABEL = "model"


class TrainingLauncher(Protocol):
    """Starts and watches training runs; the webhook calls it from its own threads."""

    def start(self, model: str) -> str:
        """Start a training run of ``model``; return its run id. May take a while."""
        ...

    def running(self, model: str) -> bool:
        """Whether a run of ``model`` started by this launcher is still in flight."""
        ...


@dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    fingerprint: str


@dataclass(frozen=True)
class Notification:
    group_key: str
    status: str
    receiver: str
    alerts: list[Alert] = field(default_factory=list)


def parse_notification(document: Any) -> Notification:
    """Check an Alertmanager webhook payload (version 4); InvalidInput names the bad field."""
    if not isinstance(document, dict):
        raise InvalidInput("the payload must be a JSON object (Alertmanager's webhook payload, version 4)")
    version = _field(document, "version", str)
    if version != PAYLOAD_VERSION:
        raise InvalidInput(
            f"version: expected {PAYLOAD_VERSION!r} (Alertmanager's webhook payload), got {version!r}"
        )
    group_key = _field(document, "groupKey", str)
    status = _status(document, "status")
    receiver = _field(document, "receiver", str)
    raw_alerts = _field(document, "alerts", list)
    alerts = []
    for index, raw in enumerate(raw_alerts):
        where = f"alerts[{index}]"
        if not isinstance(raw, dict):
            raise InvalidInput(f"{where}: must be an object")
        alerts.append(
            Alert(
                status=_status(raw, "status", where),
                labels=_strings(raw, "labels", where),
                annotations=_strings(raw, "annotations", where, required=False),
                starts_at=_timestamp(raw, "startsAt", where),
                fingerprint=_fingerprint(raw, where),
            )
        )
    return Notification(group_key, status, receiver, alerts)


def _field(document: Mapping[str, Any], name: str, kind: type, where: str = "") -> Any:
    path = f"{where}.{name}" if where else name
    if name not in document:
        raise InvalidInput(f"{path}: missing")
    value = document[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InvalidInput(
            f"{path}: must be a {'string' if kind is str else kind.__name__}, got {value!r:.60}"
        )
    return value


def _status(document: Mapping[str, Any], name: str, where: str = "") -> str:
    value: str = _field(document, name, str, where)
    if value not in ("firing", "resolved"):
        path = f"{where}.{name}" if where else name
        raise InvalidInput(f"{path}: must be 'firing' or 'resolved', got {value!r:.60}")
    return value


def _strings(document: Mapping[str, Any], name: str, where: str, *, required: bool = True) -> dict[str, str]:
    if not required and name not in document:
        return {}
    value: dict[str, Any] = _field(document, name, dict, where)
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidInput(f"{where}.{name}.{key}: must be a string, got {item!r:.60}")
    return dict(value)


def _timestamp(document: Mapping[str, Any], name: str, where: str) -> datetime:
    text: str = _field(document, name, str, where)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{where}.{name}: not an RFC 3339 time: {text!r:.60}") from None
    if moment.tzinfo is None:
        raise InvalidInput(f"{where}.{name}: needs a time zone: {text!r:.60}")
    return moment.astimezone(UTC)


def _fingerprint(document: Mapping[str, Any], where: str) -> str:
    value: str = _field(document, "fingerprint", str, where)
    if not value or len(value) > 64 or not value.isalnum():
        raise InvalidInput(f"{where}.fingerprint: must be 1 to 64 letters and digits, got {value!r:.60}")
    return value


@dataclass(frozen=True)
class Decision:
    model: str
    alertname: str
    fingerprint: str
    outcome: str  # starting, duplicate, cooldown, in_flight, no_model
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if v}


class RetrainWebhook:
    """Turns notifications into at most one training run per model at a time (see the module doc)."""

    def __init__(
        self,
        engine: Engine,
        launcher: TrainingLauncher,
        *,
        cooldown: timedelta = timedelta(hours=6),
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.launcher = launcher
        self.cooldown = cooldown
        self.now = now
        # Decisions of one process are serialised: two alerts of one model in flight at once start one run.
        self._decide = threading.Lock()
        self._threads: list[threading.Thread] = []

    def handle(self, document: Any) -> list[Decision]:
        """Decide on every firing alert of a payload; training starts in the background."""
        notification = parse_notification(document)
        decisions = []
        for alert in notification.alerts:
            if alert.status != "firing":
                continue
            decisions.append(self._decide_alert(notification.group_key, alert))
        return decisions

    def _decide_alert(self, group_key: str, alert: Alert) -> Decision:
        alertname = alert.labels.get("alertname", "")[:255]
        model = alert.labels.get(MODEL_LABEL, "")
        if not model:
            return Decision("", alertname, alert.fingerprint, "no_model", "the alert has no 'model' label")
        with self._decide:
            received = self.now()
            outcome, detail = self._gate(model, received)
            values = {
                "group_key": group_key,
                "fingerprint": alert.fingerprint,
                "starts_at": alert.starts_at,
                "model": model[:63],
                "alertname": alertname,
                "received_at": received,
                "outcome": outcome,
                "detail": detail or None,
            }
            try:
                with self.engine.begin() as connection:
                    inserted = connection.execute(
                        insert(RetrainTrigger).values(**values).returning(RetrainTrigger.id)
                    )
                    row_id = int(inserted.scalar_one())
            except IntegrityError:
                return Decision(
                    model, alertname, alert.fingerprint, "duplicate", "this alert was notified before"
                )
        if outcome == "starting":
            thread = threading.Thread(
                target=self._start, args=(row_id, model), name=f"retrain-{model}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        log.info("alert %s for model %s (%s): %s %s", alertname, model, alert.fingerprint, outcome, detail)
        return Decision(model, alertname, alert.fingerprint, outcome, detail)

    def _gate(self, model: str, received: datetime) -> tuple[str, str]:
        with self.engine.connect() as connection:
            last = connection.execute(
                select(func.max(RetrainTrigger.received_at)).where(
                    RetrainTrigger.model == model, RetrainTrigger.outcome.in_(("starting", "started"))
                )
            ).scalar_one()
        if last is not None:
            last = last if last.tzinfo else last.replace(tzinfo=UTC)  # SQLite returns naive UTC
            if received - last < self.cooldown:
                return (
                    "cooldown",
                    f"a run started at {last.isoformat()}, within the cooldown of {self.cooldown}",
                )
        if self.launcher.running(model):
            return "in_flight", "a training run of this model is still running"
        return "starting", ""

    def _start(self, row_id: int, model: str) -> None:
        try:
            run_id = self.launcher.start(model)
        except Exception as exc:  # reported in the row and the log; the webhook itself stays up
            log.exception("could not start training of %s", model)
            self._finish(row_id, "failed", None, f"{type(exc).__name__}: {exc}")
            return
        self._finish(row_id, "started", run_id, None)

    def _finish(self, row_id: int, outcome: str, run_id: str | None, detail: str | None) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(RetrainTrigger)
                .where(RetrainTrigger.id == row_id)
                .values(outcome=outcome, run_id=run_id, detail=detail[:2000] if detail else None)
            )

    def wait(self, timeout_s: float = 30.0) -> None:
        """Wait for the launches started so far (for tests and a clean shutdown)."""
        for thread in list(self._threads):
            thread.join(timeout=timeout_s)


def serve_webhook(webhook: RetrainWebhook, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server for ``webhook`` (call ``serve_forever`` on it): POST /alerts, GET /healthz."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "modelyard-retrain-webhook"

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._answer(HTTPStatus.OK, {"status": "ok"})
            else:
                self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path!r}: POST /alerts"})

        def do_POST(self) -> None:
            if self.path != "/alerts":
                self._answer(HTTPStatus.NOT_FOUND, {"error": f"no such path {self.path!r}: POST /alerts"})
                return
            declared = self.headers.get("Content-Length") or "0"
            if not declared.isdigit():
                problem = f"Content-Length {declared!r} is not a number"
                self._answer(HTTPStatus.BAD_REQUEST, {"error": problem})
                return
            length = int(declared)
            if length > MAX_BODY_BYTES:
                self._answer(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"body over {MAX_BODY_BYTES} bytes"}
                )
                return
            body = self.rfile.read(length)
            try:
                document = json.loads(body)
            except ValueError as exc:
                self._answer(HTTPStatus.BAD_REQUEST, {"error": f"the body is not JSON: {exc}"})
                return
            try:
                decisions = webhook.handle(document)
            except InvalidInput as exc:
                self._answer(HTTPStatus.BAD_REQUEST, {"error": exc.message})
                return
            except Exception:  # the database is down: Alertmanager retries a 5xx
                log.exception("could not handle a notification")
                reason = "could not record the notification (the webhook's log has the error); retry"
                self._answer(HTTPStatus.SERVICE_UNAVAILABLE, {"error": reason})
                return
            self._answer(HTTPStatus.ACCEPTED, {"decisions": [d.to_dict() for d in decisions]})

        def _answer(self, status: HTTPStatus, document: Mapping[str, Any]) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return ThreadingHTTPServer((host, port), Handler)


__all__ = [
    "Alert",
    "Decision",
    "Notification",
    "RetrainWebhook",
    "TrainingLauncher",
    "parse_notification",
    "serve_webhook",
]
