-- PostgreSQL twin of migrations/sqlite/0002_suppressions.sql.
-- Consent: who must not be sent to, on which channel, and the audit log of
-- every change to that list. docs/specs/store.md explains every column.

-- One row per suppressed address. `address` is an E.164 phone number (sms)
-- or a lower-cased email address (email); the two never collide, so a claim
-- batch looks its recipients up by address alone.
CREATE TABLE suppressions (
    address    TEXT    NOT NULL,
    channel    TEXT    NOT NULL CHECK (channel IN ('sms', 'email')),
    source     TEXT    NOT NULL,
    reason     TEXT,
    created_at BIGINT  NOT NULL,
    PRIMARY KEY (address, channel)
);

-- Every change to the suppression list: who (`actor`: twilio, resend, admin,
-- herald), when, why. Rows are only ever added (and erased with the address
-- on a GDPR erasure of the user who owned it).
CREATE TABLE suppression_audit (
    id      BIGSERIAL PRIMARY KEY,
    address TEXT    NOT NULL,
    channel TEXT    NOT NULL CHECK (channel IN ('sms', 'email')),
    action  TEXT    NOT NULL CHECK (action IN ('suppress', 'allow')),
    actor   TEXT    NOT NULL,
    source  TEXT    NOT NULL,
    reason  TEXT,
    at      BIGINT  NOT NULL
);
CREATE INDEX suppression_audit_address ON suppression_audit (address, channel);

-- Webhook deliveries already processed (Svix `svix-id`), so a replay is
-- answered without being applied twice. Pruned by retention.
CREATE TABLE webhook_receipts (
    id          TEXT    PRIMARY KEY NOT NULL,
    received_at BIGINT  NOT NULL
);
