"""The request that made a posting lives on the posting's row (issue 16: fewer rows per earn).

An earn wrote four rows besides its entries and lot: the posting, its idempotency record
(`idempotency_keys`) and its signature evidence (`posting_signatures`), each with its own
primary key and foreign keys (three foreign-key checks per earn). The record and the
evidence are now columns of the posting:

- `postings` gains the key with the response stored under it (`idempotency_key`,
  `request_fingerprint`, `response_status`, `response`) and the verified signature
  (`signature_key_id`, `signature_input`, `signature`, `content_digest`,
  `signature_base`). A partner's key names one posting at most
  (`uq_postings_partner_id_idempotency_key`, which the claim reads by).
- The signature evidence already stored moves onto its postings; `posting_signatures`
  becomes a view of those columns (what `exchange audit` reads).
- `idempotency_keys` is renamed `idempotency_records`: the responses stored without a
  posting of their own on the posting path (enrolment, sessions, batch acceptance,
  webhook retries, operators' POSTs) and every record stored before this migration. A view
  named `idempotency_keys` shows both places as one, and is what claims read.
- A key is stored in one place only: a trigger on each side refuses a key the other side
  holds, with `unique_violation` as a duplicate key in one table was refused
  before, so the posting path's retry replays the stored response.
- Erasure may still scrub a member's postings, now also of the partners' stored keys and
  responses (a retry gets 404, never a replay), and nothing else.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_KEY_COLUMNS = ("idempotency_key", "request_fingerprint", "response_status", "response")
_SIGNATURE_COLUMNS = (
    "signature_key_id",
    "signature_input",
    "signature",
    "content_digest",
    "signature_base",
)

# The journal stays append-only. Erasure (with `exchange.erasing_member` set to the
# posting's member) may clear the partner's reference and the partner's stored key and
# response, and nothing else.
_ERASABLE = ("reference", *_KEY_COLUMNS)
_POSTINGS_GUARD = """
CREATE OR REPLACE FUNCTION postings_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND OLD.member_id = current_setting('exchange.erasing_member', true)
       AND {all_null}
       AND to_jsonb(NEW) - {erasable} = to_jsonb(OLD) - {erasable} THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ledger table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$
""".format(
    all_null=" AND ".join(f"NEW.{column} IS NULL" for column in _ERASABLE),
    erasable="ARRAY[" + ", ".join(f"'{column}'" for column in _ERASABLE) + "]",
)
# Migration 0007's guard, for the downgrade.
_POSTINGS_GUARD_0007 = """
CREATE OR REPLACE FUNCTION postings_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND NEW.reference IS NULL
       AND OLD.member_id = current_setting('exchange.erasing_member', true)
       AND to_jsonb(NEW) - 'reference' = to_jsonb(OLD) - 'reference' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ledger table % is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END $$
"""

# One place per key. On postings a statement trigger (once per statement, not per row:
# the posting path writes a batch's postings in one statement); on idempotency_records a
# row trigger (see there).
_KEY_ONCE = [
    """
CREATE FUNCTION postings_key_once() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    taken record;
BEGIN
    SELECT n.partner_id, n.idempotency_key INTO taken
    FROM new_postings AS n
    JOIN idempotency_records AS r ON r.partner_id = n.partner_id AND r.key = n.idempotency_key
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'idempotency key % of % is already stored in idempotency_records',
            taken.idempotency_key, taken.partner_id USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NULL;
END $$
""",
    """
CREATE TRIGGER postings_key_once AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION postings_key_once()
""",
    """
CREATE FUNCTION idempotency_records_key_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM postings AS p
               WHERE p.partner_id = NEW.partner_id AND p.idempotency_key = NEW.key) THEN
        RAISE EXCEPTION 'idempotency key % of % is already stored on a posting',
            NEW.key, NEW.partner_id USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NULL;
END $$
""",
    # A row trigger: the posting path's write has an (almost always empty) insert into
    # idempotency_records, and a statement trigger fires even for no rows.
    """
CREATE TRIGGER idempotency_records_key_once AFTER INSERT ON idempotency_records
    FOR EACH ROW EXECUTE FUNCTION idempotency_records_key_once()
""",
]

_VIEWS = [
    """
CREATE VIEW idempotency_keys AS
SELECT partner_id, key, fingerprint, status_code, response, posting_id, created_at
FROM idempotency_records
UNION ALL
SELECT partner_id, idempotency_key, request_fingerprint, response_status, response,
       posting_id, recorded_at
FROM postings WHERE idempotency_key IS NOT NULL
""",
    """
CREATE VIEW posting_signatures AS
SELECT posting_id, signature_key_id AS key_id, signature_input, signature, content_digest,
       signature_base
FROM postings WHERE signature IS NOT NULL
""",
]

_REQUEST_CHECK = (
    "(idempotency_key IS NULL) = (request_fingerprint IS NULL) "
    "AND (idempotency_key IS NULL) = (response_status IS NULL) "
    "AND (idempotency_key IS NULL) = (response IS NULL) "
    "AND (idempotency_key IS NULL OR partner_id IS NOT NULL)"
)
_SIGNATURE_CHECK = (
    "(signature IS NULL) = (signature_key_id IS NULL) "
    "AND (signature IS NULL) = (signature_input IS NULL) "
    "AND (signature IS NULL) = (signature_base IS NULL) "
    "AND (signature IS NOT NULL OR content_digest IS NULL)"
)


def _rename_records(old: str, new: str) -> None:
    op.rename_table(old, new)
    op.execute(f"ALTER TABLE {new} RENAME CONSTRAINT pk_{old} TO pk_{new}")
    for column, referred in (("partner_id", "partners"), ("posting_id", "postings")):
        op.execute(
            f"ALTER TABLE {new} RENAME CONSTRAINT fk_{old}_{column}_{referred} "
            f"TO fk_{new}_{column}_{referred}"
        )


def upgrade() -> None:
    op.add_column("postings", sa.Column("idempotency_key", sa.String(255), nullable=True))
    op.add_column("postings", sa.Column("request_fingerprint", sa.LargeBinary(), nullable=True))
    op.add_column("postings", sa.Column("response_status", sa.SmallInteger(), nullable=True))
    op.add_column("postings", sa.Column("response", sa.LargeBinary(), nullable=True))
    op.add_column("postings", sa.Column("signature_key_id", sa.String(64), nullable=True))
    op.add_column("postings", sa.Column("signature_input", sa.Text(), nullable=True))
    op.add_column("postings", sa.Column("signature", sa.Text(), nullable=True))
    op.add_column("postings", sa.Column("content_digest", sa.Text(), nullable=True))
    op.add_column("postings", sa.Column("signature_base", sa.LargeBinary(), nullable=True))

    # The evidence already stored moves onto its postings (the one UPDATE the journal's
    # guard is switched off for, in this migration's own transaction).
    op.execute("ALTER TABLE postings DISABLE TRIGGER postings_append_only")
    op.execute(
        "UPDATE postings AS p SET signature_key_id = s.key_id, "
        "signature_input = s.signature_input, signature = s.signature, "
        "content_digest = s.content_digest, signature_base = s.signature_base "
        "FROM posting_signatures AS s WHERE s.posting_id = p.posting_id"
    )
    op.execute("ALTER TABLE postings ENABLE TRIGGER postings_append_only")
    op.drop_table("posting_signatures")

    op.create_check_constraint(op.f("ck_postings_request"), "postings", _REQUEST_CHECK)
    op.create_check_constraint(op.f("ck_postings_signature"), "postings", _SIGNATURE_CHECK)
    op.create_index(
        "uq_postings_partner_id_idempotency_key",
        "postings",
        ["partner_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    _rename_records("idempotency_keys", "idempotency_records")
    for statement in (*_KEY_ONCE, *_VIEWS, _POSTINGS_GUARD):
        op.execute(statement)


def downgrade() -> None:
    op.execute(_POSTINGS_GUARD_0007)
    op.execute("DROP VIEW posting_signatures")
    op.execute("DROP VIEW idempotency_keys")
    op.execute("DROP TRIGGER idempotency_records_key_once ON idempotency_records")
    op.execute("DROP FUNCTION idempotency_records_key_once()")
    op.execute("DROP TRIGGER postings_key_once ON postings")
    op.execute("DROP FUNCTION postings_key_once()")
    _rename_records("idempotency_records", "idempotency_keys")
    op.execute(
        "INSERT INTO idempotency_keys (partner_id, key, fingerprint, status_code, response, "
        "posting_id, created_at) SELECT partner_id, idempotency_key, request_fingerprint, "
        "response_status, response, posting_id, recorded_at FROM postings "
        "WHERE idempotency_key IS NOT NULL"
    )
    op.create_table(
        "posting_signatures",
        sa.Column("posting_id", sa.Uuid(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("signature_input", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("content_digest", sa.Text(), nullable=True),
        sa.Column("signature_base", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["posting_id"],
            ["postings.posting_id"],
            name=op.f("fk_posting_signatures_posting_id_postings"),
        ),
        sa.PrimaryKeyConstraint("posting_id", name=op.f("pk_posting_signatures")),
    )
    op.execute(
        "INSERT INTO posting_signatures SELECT posting_id, signature_key_id, signature_input, "
        "signature, content_digest, signature_base FROM postings WHERE signature IS NOT NULL"
    )
    for trigger, when in (("append_only", "UPDATE OR DELETE"), ("no_truncate", "TRUNCATE")):
        scope = "ROW" if trigger == "append_only" else "STATEMENT"
        op.execute(
            f"CREATE TRIGGER posting_signatures_{trigger} BEFORE {when} ON posting_signatures "
            f"FOR EACH {scope} EXECUTE FUNCTION ledger_refuse_change()"
        )
    op.drop_index("uq_postings_partner_id_idempotency_key", table_name="postings")
    op.drop_constraint(op.f("ck_postings_signature"), "postings", type_="check")
    op.drop_constraint(op.f("ck_postings_request"), "postings", type_="check")
    for column in reversed((*_KEY_COLUMNS, *_SIGNATURE_COLUMNS)):
        op.drop_column("postings", column)
