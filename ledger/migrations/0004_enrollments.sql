-- Schema version 4: enrollments made through the DPS service API.
--
-- One row per device whose individual enrollment dps-batch created, updated,
-- deleted or deregistered (dps-batch enroll, dps-batch deregister), beside
-- its provisioning row in devices (same registration id; either may exist
-- without the other). A state is written before every request that may
-- change the enrollment (creating, deleting: the intent), so that a run
-- killed while a request was in flight reads the enrollment back before
-- sending anything again: nothing is created twice.

CREATE TABLE enrollments (
	registration_id TEXT    PRIMARY KEY,
	state           INTEGER NOT NULL CHECK (state BETWEEN 1 AND 10), -- see enrollStateCodes in enrollment.go
	op              TEXT    NOT NULL DEFAULT '', -- bulk mode of the last intent: create, update, updateIfMatchETag, delete
	attestation     TEXT    NOT NULL DEFAULT '', -- x509 or symmetricKey
	fingerprint     TEXT    NOT NULL DEFAULT '', -- of the attestation (never key material)
	spec_hash       TEXT    NOT NULL DEFAULT '', -- of the whole enrollment last sent (keys only as their fingerprint)
	etag            TEXT    NOT NULL DEFAULT '', -- the record's etag when last read, '' = unknown
	http_status     INTEGER NOT NULL DEFAULT 0,
	error_code      INTEGER NOT NULL DEFAULT 0,
	error_message   TEXT    NOT NULL DEFAULT '',
	hint            TEXT    NOT NULL DEFAULT '',
	request_id      TEXT    NOT NULL DEFAULT '',
	calls           INTEGER NOT NULL DEFAULT 0,  -- requests that carried a change of it (bulk items, deletes)
	reads           INTEGER NOT NULL DEFAULT 0,  -- reads of it (GET)
	intent_at       INTEGER,                     -- Unix ms: the last intent, written before its request
	finished_at     INTEGER,                     -- Unix ms
	updated_at      INTEGER NOT NULL,            -- Unix ms
	run_id          INTEGER REFERENCES runs (id),
	registration    INTEGER NOT NULL DEFAULT 0,  -- deregister: 0 untouched, 1 deleted, 2 none to delete, 3 failed
	registration_at INTEGER                      -- Unix ms: when the registration state was deleted or found absent
) STRICT;

-- The DPS service host the enrollments belong to; at most one row.
CREATE TABLE service_binding (
	id       INTEGER PRIMARY KEY CHECK (id = 1),
	host     TEXT    NOT NULL,                   -- lower case, no scheme
	bound_at INTEGER NOT NULL                    -- Unix ms
) STRICT;
