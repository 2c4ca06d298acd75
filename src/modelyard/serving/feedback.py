"""Ground truth: the true label of a logged prediction, for live accuracy (POST /v1/models/NAME/feedback).

Feedback names a prediction by (model, request_id, row) and is accepted only when that prediction is in
the ``predictions`` table. The prediction log writes asynchronously, so a prediction made an instant
ago may not be there yet (at most the server's ``log_flush_interval_s`` plus the log's send interval,
``prediction_log.process.SEND_INTERVAL_S``; longer while the log spools because the database is down
or not migrated): the answer is then NotFound, which says so, and the server can
``await prediction_log.flush()`` and try once more. This keeps the rule simple and honest: no ground
truth without the prediction it grades.

Nothing here migrates the database: one that lacks the tables (``modelyard db upgrade`` was not run)
is NotReady, naming the command.

One label per prediction. Feedback again for the same prediction replaces the label (a correction is
normal: labellers make mistakes), and the result reports the label it replaced. A request id the client
used for several requests names several logged predictions: feedback on it is a Conflict (409), never a
guess at which one it grades. A request scored by two versions (the served one and a shadow candidate)
is no such ambiguity: each version logged it under the same id, and the one label grades that row for
both (live accuracy counts it per version). The answer the client had, which the result reports, is
the logged row that was ``answered``: a shadow candidate's rows never are, whatever the server runs
now.

The log holds one row per request (``rows`` values in each column), so a prediction is found by request
id and then by row number within it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, inspect, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from modelyard.errors import Conflict, InvalidInput, NotFound, NotReady, database_reason
from modelyard.registry.db import WRITE_OPTION, create_engine_for, redact
from modelyard.registry.tables import NAME_LENGTH, REQUEST_ID_LENGTH, Feedback, Prediction, utc_now
from modelyard.serving.types import FeedbackResult

log = logging.getLogger(__name__)

_KEY = ["request_id", "row", "model"]
MAX_ROW = 2**31 - 1
"""The largest row number the tables' INTEGER column holds."""
LOOKUP_LIMIT = 16
"""Logged requests read for one feedback: two answered ones under an id already make it ambiguous."""


def _check(
    model: str, request_id: str, label: str | int, row: int, classes: Sequence[str | int] | None
) -> str:
    if not isinstance(model, str) or not model or len(model) > NAME_LENGTH:
        raise InvalidInput(f"model must be a name of 1 to {NAME_LENGTH} characters, got {model!r}")
    if not isinstance(request_id, str) or not request_id or len(request_id) > REQUEST_ID_LENGTH:
        raise InvalidInput(
            f"request_id must be a string of 1 to {REQUEST_ID_LENGTH} characters, got {request_id!r}"
        )
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row <= MAX_ROW:
        raise InvalidInput(
            f"row must be an integer from 0 to {MAX_ROW} (the row within the request), got {row!r}"
        )
    if isinstance(label, bool) or not isinstance(label, str | int) or label == "":
        raise InvalidInput(f"label must be a class name or number, got {label!r}")
    text = str(label)
    if classes is not None and text not in {str(known) for known in classes}:
        listed = ", ".join(repr(known) for known in classes)
        raise InvalidInput(f"label {label!r} is not one of the classes of model {model!r}: {listed}")
    return text


def record_feedback(
    database_url_or_engine: str | Engine,
    *,
    model: str,
    request_id: str,
    label: str | int,
    row: int = 0,
    classes: Sequence[str | int] | None = None,
) -> FeedbackResult:
    """Store the true ``label`` of row ``row`` of request ``request_id`` answered by ``model``.

    InvalidInput names a bad argument (or a label outside ``classes``, when given); NotFound names the
    request id when no such prediction is logged; NotReady when the database cannot be reached, or
    lacks the tables (nobody ran `modelyard db upgrade`). Pass the server's Engine: a URL makes (and
    disposes) an engine per call, which is fine for scripts. The label is checked against the answer
    the client got: a shadow candidate's logged rows are not it.
    """
    text = _check(model, request_id, label, row, classes)
    if isinstance(database_url_or_engine, Engine):
        engine, owned = database_url_or_engine, False
    else:
        engine, owned = create_engine_for(database_url_or_engine), True
    try:
        with engine.connect() as connection:
            connection.execution_options(**{WRITE_OPTION: True})
            with connection.begin():
                return _store(connection, model=model, request_id=request_id, row=row, label=text)
    except DBAPIError as exc:
        # Tell the caller's answers (503: try later; 404: nothing is logged here) from a bug (500).
        # The answer says what is wrong; where the database is, and the driver's words, go to the log.
        if not _reachable(engine):
            log.warning("feedback: %s is unavailable: %s", redact(engine.url), database_reason(exc))
            raise NotReady("cannot record feedback: the registry database is unavailable; retry") from exc
        missing = _missing_tables(engine)
        if missing:
            log.warning("feedback: %s has no %s table", redact(engine.url), " and no ".join(missing))
            raise NotReady(
                f"cannot record feedback: the registry database has no {' and no '.join(missing)} table: "
                "it is not migrated; run `modelyard db upgrade`"
            ) from exc
        raise
    finally:
        if owned:
            engine.dispose()


def _table(orm_class: type[Prediction | Feedback]) -> Table:
    table = orm_class.__table__
    assert isinstance(table, Table)
    return table


def _key(table: Table, model: str, request_id: str, row: int) -> ColumnElement[bool]:
    return and_(table.c.request_id == request_id, table.c.row == row, table.c.model == model)


def _store(connection: Connection, *, model: str, request_id: str, row: int, label: str) -> FeedbackResult:
    predictions, feedback = _table(Prediction), _table(Feedback)
    logged = connection.execute(
        select(predictions.c.version, predictions.c.rows, predictions.c.labels)
        .where(
            predictions.c.request_id == request_id,
            predictions.c.model == model,
            predictions.c.answered.is_(True),
        )
        .order_by(predictions.c.id)
        # enough to tell an ambiguous id, without reading every request a client sent under one id
        .limit(LOOKUP_LIMIT)
    ).all()
    if not logged:
        raise NotFound(
            f"no logged prediction of model {model!r} has request id {request_id!r}; predictions are "
            "written asynchronously, so a request answered a moment ago may not be logged yet: retry shortly"
        )
    matches = [p for p in logged if row < p.rows and _label_of(p.labels, row) is not None]
    if not matches:
        rows = max(p.rows for p in logged)
        raise NotFound(
            f"request id {request_id!r} of model {model!r} has {rows} logged row(s) (0 to {rows - 1}), "
            f"not row {row}"
        )
    if len(matches) > 1:  # each request has one answered row: two mean two requests under one id
        raise Conflict(
            f"request id {request_id!r} of model {model!r} names more than one logged prediction (the "
            "client sent it with several requests), so feedback cannot tell which one it grades; send "
            "each request with an id of its own, or none (the server then makes one)"
        )
    predicted = matches[0]
    predicted_label = str(_label_of(predicted.labels, row))
    replaced = connection.execute(
        select(feedback.c.label).where(_key(feedback, model, request_id, row))
    ).scalar_one_or_none()
    created_at = utc_now()
    insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    statement = insert(feedback).values(
        request_id=request_id, row=row, model=model, label=label, created_at=created_at
    )
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=_KEY, set_={"label": statement.excluded.label, "created_at": created_at}
        )
    )
    return FeedbackResult(
        model=model,
        version=predicted.version,
        request_id=request_id,
        row=row,
        label=label,
        predicted_label=predicted_label,
        correct=predicted_label == label,
        replaced=replaced,
        created_at=created_at,
    )


def _label_of(labels: Any, row: int) -> Any:
    """Row ``row``'s predicted label in a logged request's labels (None where the log holds none)."""
    return labels[row] if isinstance(labels, list) and row < len(labels) else None


def _reachable(engine: Engine) -> bool:
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        return True
    except DBAPIError:
        return False


def _missing_tables(engine: Engine) -> list[str]:
    """The tables feedback needs that the database lacks (none when that cannot be told)."""
    try:
        inspector = inspect(engine)
        return [
            table.name
            for table in (_table(Prediction), _table(Feedback))
            if not inspector.has_table(table.name)
        ]
    except DBAPIError:
        return []  # unknown: let the original error speak
