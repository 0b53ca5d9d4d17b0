"""Review state in a database: each cell's reviewed class, sign-offs, and an append-only audit trail.

SQLAlchemy Core, so the same code runs on SQLite (the default: REPORT/review.sqlite, WAL mode) and
on PostgreSQL (`--db postgresql://...`). Every write is one transaction that reads the current value
and writes the new one together (SQLite: BEGIN IMMEDIATE; PostgreSQL: SERIALIZABLE), so two
browser sessions on one patient lose nothing: the later write of a cell wins and both are audited.

A patient's revision is the id of its newest audit row: a sign-off names the revision its counts
were computed at and is refused when the patient changed since.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import NamedTuple

import sqlalchemy as sa

from pipeline.review.cells import REVIEW_CLASSES, UNREVIEWED

SCHEMA_VERSION = 1
ACTION_CORRECT, ACTION_UNDO, ACTION_SIGN_OFF, ACTION_REOPEN = "correct", "undo", "sign_off", "reopen"
AUDIT_COLUMNS = ("id", "at", "reviewer", "patient_id", "cell_key", "action", "from_class", "to_class", "reason")

_meta = sa.MetaData()
META = sa.Table("review_meta", _meta, sa.Column("key", sa.String(64), primary_key=True),
                sa.Column("value", sa.Text, nullable=False))  # fmt: skip
DECISIONS = sa.Table(
    "decisions", _meta,
    sa.Column("cell_key", sa.String(200), primary_key=True),
    sa.Column("patient_id", sa.Text, nullable=False, index=True),
    sa.Column("cell_class", sa.String(40), nullable=False),
    sa.Column("reviewer", sa.Text, nullable=False),
    sa.Column("at", sa.String(40), nullable=False),
)  # fmt: skip
SIGNOFFS = sa.Table(
    "signoffs", _meta,
    sa.Column("patient_id", sa.Text, primary_key=True),
    sa.Column("reviewer", sa.Text, nullable=False),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("record", sa.Text, nullable=False),  # JSON of the signed counts (what signed/<id>.json holds)
)  # fmt: skip
AUDIT = sa.Table(
    "audit", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.String(40), nullable=False),
    sa.Column("reviewer", sa.Text, nullable=False),
    sa.Column("patient_id", sa.Text, nullable=False),
    sa.Column("cell_key", sa.String(200)),
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("from_class", sa.String(40)),
    sa.Column("to_class", sa.String(40)),
    sa.Column("reason", sa.Text),
    sa.Index("ix_audit_patient_id", "patient_id", "id"),  # a patient's revision: max(id) from the index alone
)  # fmt: skip
# SQLite: the audit trail refuses UPDATE and DELETE at the database, not only in this code.
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER IF NOT EXISTS audit_no_{op.lower()} BEFORE {op} ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"
    for op in ("UPDATE", "DELETE")
]


class Change(NamedTuple):
    """What one correction did."""

    from_class: str
    revision: int
    decisions: dict[str, str]  # the patient's decisions after it


class ReviewRefused(ValueError):
    """A review action that is not allowed now (signed patient, stale counts, unsure cells left)."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ReviewStore:
    """The review database of one report."""

    def __init__(self, url: str, fingerprint: str, report: str):
        self.url = url
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            self.engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            sa.event.listen(self.engine, "connect", _sqlite_connect)
            sa.event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        else:
            self.engine = sa.create_engine(url, isolation_level="SERIALIZABLE", pool_pre_ping=True)
        _meta.create_all(self.engine)
        with self.engine.begin() as conn:
            if self.sqlite:
                for ddl in _SQLITE_TRIGGERS:
                    conn.exec_driver_sql(ddl)
            meta = dict(conn.execute(sa.select(META.c.key, META.c.value)).all())
            if not meta:
                conn.execute(META.insert(), [{"key": "fingerprint", "value": fingerprint},
                                             {"key": "report", "value": str(report)},
                                             {"key": "schema_version", "value": str(SCHEMA_VERSION)},
                                             {"key": "created", "value": now()}])  # fmt: skip
            elif meta.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"review database {url} belongs to another report ({meta.get('report')}), not "
                    f"{report}: give this report its own database (--db) or review that report"
                )

    def close(self) -> None:
        self.engine.dispose()

    # --- reads -----------------------------------------------------------------------------------
    def decisions(self, patient_id: str | None = None) -> dict[str, str]:
        """Reviewed class per cell key (of one patient, or of all)."""
        with self.engine.begin() as conn:
            return _decisions(conn, patient_id)

    def patient_view(self, patient_id: str, newest_audit: int) -> dict:
        """What a patient's page shows, read in one transaction: decisions, revision, sign-off, audit."""
        with self.engine.begin() as conn:
            signed = conn.execute(sa.select(SIGNOFFS).where(SIGNOFFS.c.patient_id == patient_id)).mappings().first()
            audit = conn.execute(sa.select(AUDIT).where(AUDIT.c.patient_id == patient_id).order_by(AUDIT.c.id.desc())
                                 .limit(newest_audit)).mappings().all()  # fmt: skip
            n_audit = conn.execute(sa.select(sa.func.count()).select_from(AUDIT).where(
                AUDIT.c.patient_id == patient_id)).scalar()  # fmt: skip
            return {"decisions": _decisions(conn, patient_id), "revision": int(audit[0]["id"]) if audit else 0,
                    "signed": dict(signed) if signed else None, "audit": [dict(a) for a in audit],
                    "n_audit": int(n_audit or 0)}  # fmt: skip

    def revision(self, patient_id: str) -> int:
        with self.engine.begin() as conn:
            return _revision(conn, patient_id)

    def signoffs(self) -> dict[str, dict]:
        """Patient id -> {reviewer, at, revision, record} of every patient signed off now."""
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(SIGNOFFS)).mappings().all()
        return {r["patient_id"]: {**r, "record": json.loads(r["record"])} for r in rows}

    def revisions(self) -> dict[str, int]:
        """Patient id -> revision, for every patient with any review (an index-only scan)."""
        with self.engine.begin() as conn:
            return dict(conn.execute(sa.select(AUDIT.c.patient_id, sa.func.max(AUDIT.c.id))
                                     .group_by(AUDIT.c.patient_id)).all())  # fmt: skip

    def audit(self, patient_id: str | None = None, newest: int | None = None) -> list[dict]:
        """Audit rows, oldest first (only the `newest` ones when given)."""
        q = sa.select(AUDIT).order_by(AUDIT.c.id.desc() if newest else AUDIT.c.id)
        if patient_id is not None:
            q = q.where(AUDIT.c.patient_id == patient_id)
        if newest:
            q = q.limit(newest)
        with self.engine.begin() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings().all()]
        return rows[::-1] if newest else rows

    def count_audit(self, patient_id: str) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(AUDIT).where(
                AUDIT.c.patient_id == patient_id)).scalar() or 0)  # fmt: skip

    # --- writes ----------------------------------------------------------------------------------
    def set_class(self, patient_id: str, key: str, to_class: str, reviewer: str, action: str = ACTION_CORRECT,
                  before: str = "") -> Change:  # fmt: skip
        """Move one cell to `to_class` (UNREVIEWED: back to no decision): its class before, the patient's new
        revision and decisions.

        `before` is the class the cell had before any review (what "no decision" means in the audit).
        """
        if to_class != UNREVIEWED and to_class not in REVIEW_CLASSES:
            raise ReviewRefused(f"unknown class {to_class!r}; known: {', '.join(REVIEW_CLASSES)}")
        with self.engine.begin() as conn:
            _refuse_if_signed(conn, patient_id)
            old = conn.execute(sa.select(DECISIONS.c.cell_class).where(DECISIONS.c.cell_key == key)).scalar()
            conn.execute(DECISIONS.delete().where(DECISIONS.c.cell_key == key))
            if to_class != UNREVIEWED:
                conn.execute(DECISIONS.insert().values(cell_key=key, patient_id=patient_id, cell_class=to_class,
                                                       reviewer=reviewer, at=now()))  # fmt: skip
            from_class = old if old is not None else before
            row = conn.execute(AUDIT.insert().values(at=now(), reviewer=reviewer, patient_id=patient_id, cell_key=key,
                                                     action=action, from_class=from_class,
                                                     to_class=to_class or before))  # fmt: skip
            return Change(from_class, int(row.inserted_primary_key[0]), _decisions(conn, patient_id))

    def sign_off(self, patient_id: str, reviewer: str, revision_seen: int, record: dict) -> int:
        """Record the sign-off of a patient whose counts were computed at `revision_seen`."""
        if not reviewer.strip():
            raise ReviewRefused("a sign-off needs the reviewer's name")
        with self.engine.begin() as conn:
            _refuse_if_signed(conn, patient_id)
            current = _revision(conn, patient_id)
            if current != int(revision_seen):
                raise ReviewRefused(
                    "the counts shown are stale: this patient changed since the page was loaded "
                    "(another session?); reload and check the counts before signing"
                )
            conn.execute(AUDIT.insert().values(at=record["signed_at"], reviewer=reviewer, patient_id=patient_id,
                                               action=ACTION_SIGN_OFF, reason=None))  # fmt: skip
            rev = _revision(conn, patient_id)
            conn.execute(SIGNOFFS.insert().values(patient_id=patient_id, reviewer=reviewer, at=record["signed_at"],
                                                  revision=rev, record=json.dumps(record)))  # fmt: skip
            return rev

    def reopen(self, patient_id: str, reviewer: str, reason: str) -> int:
        """Make a signed patient editable again; the reason goes to the audit trail."""
        if not reason.strip():
            raise ReviewRefused("reopening a signed patient needs a reason")
        with self.engine.begin() as conn:
            if not _is_signed(conn, patient_id):
                raise ReviewRefused(f"patient {patient_id!r} is not signed off")
            conn.execute(SIGNOFFS.delete().where(SIGNOFFS.c.patient_id == patient_id))
            conn.execute(AUDIT.insert().values(at=now(), reviewer=reviewer or "(unnamed)", patient_id=patient_id,
                                               action=ACTION_REOPEN, reason=reason.strip()))  # fmt: skip
            return _revision(conn, patient_id)


def _sqlite_connect(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN IMMEDIATE instead
    dbapi_conn.execute("PRAGMA journal_mode=WAL")
    dbapi_conn.execute("PRAGMA synchronous=NORMAL")
    dbapi_conn.execute("PRAGMA busy_timeout=30000")


def _decisions(conn, patient_id: str | None) -> dict[str, str]:
    q = sa.select(DECISIONS.c.cell_key, DECISIONS.c.cell_class)
    if patient_id is not None:
        q = q.where(DECISIONS.c.patient_id == patient_id)
    return dict(conn.execute(q).all())


def _revision(conn, patient_id: str) -> int:
    return int(conn.execute(sa.select(sa.func.max(AUDIT.c.id)).where(AUDIT.c.patient_id == patient_id)).scalar() or 0)


def _is_signed(conn, patient_id: str) -> bool:
    return conn.execute(sa.select(SIGNOFFS.c.patient_id).where(SIGNOFFS.c.patient_id == patient_id)).first() is not None


def _refuse_if_signed(conn, patient_id: str) -> None:
    if _is_signed(conn, patient_id):
        raise ReviewRefused(
            f"patient {patient_id!r} is signed off and read-only; reopen it (with a reason) to change it"
        )
