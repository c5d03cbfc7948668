-- Schema version 1 of the dps-batch ledger.
--
-- Sizes matter: a fleet can have hundreds of thousands of devices, so times are
-- Unix milliseconds, states and attempt kinds are small integer codes, and
-- request ids that are canonical GUIDs are stored as 16-byte blobs (see
-- packID in device.go). Empty strings and zero numbers cost no payload bytes.

-- Marks the file as a dps-batch ledger ("DPSB"); Open refuses SQLite files
-- that carry another application id.
PRAGMA application_id = 1146114882;

-- One row per run of a command against this ledger.
CREATE TABLE runs (
	id          INTEGER PRIMARY KEY,
	started_at  INTEGER NOT NULL,            -- Unix ms
	finished_at INTEGER,                     -- Unix ms, NULL while running or after a crash
	command     TEXT    NOT NULL,
	outcome     TEXT    NOT NULL DEFAULT '',
	options     TEXT    NOT NULL DEFAULT '{}', -- JSON object of strings
	counts      TEXT    NOT NULL DEFAULT '{}'  -- JSON object state -> count
) STRICT;

-- The DPS instance this ledger belongs to; at most one row.
CREATE TABLE binding (
	id       INTEGER PRIMARY KEY CHECK (id = 1),
	id_scope TEXT    NOT NULL,
	endpoint TEXT    NOT NULL,               -- normalised: lower-case scheme and host, no trailing slash
	bound_at INTEGER NOT NULL                -- Unix ms
) STRICT;

-- Current state of every device. The integer id keeps the attempt log's
-- reference to a device small; registration_id is the natural key.
CREATE TABLE devices (
	id               INTEGER PRIMARY KEY,
	registration_id  TEXT    NOT NULL UNIQUE,
	state            INTEGER NOT NULL CHECK (state BETWEEN 1 AND 7), -- see stateCodes in device.go
	operation_id     TEXT    NOT NULL DEFAULT '',
	assigned_hub     TEXT    NOT NULL DEFAULT '',
	device_id        TEXT    NOT NULL DEFAULT '',
	substatus        TEXT    NOT NULL DEFAULT '',
	error_code       INTEGER NOT NULL DEFAULT 0,
	error_message    TEXT    NOT NULL DEFAULT '',
	hint             TEXT    NOT NULL DEFAULT '',
	http_status      INTEGER NOT NULL DEFAULT 0,
	request_id       ANY,                    -- 16-byte blob for a canonical GUID, else text
	attempts         INTEGER NOT NULL DEFAULT 0,
	polls            INTEGER NOT NULL DEFAULT 0,
	fingerprint      TEXT    NOT NULL DEFAULT '',
	first_attempt_at INTEGER,                -- Unix ms
	finished_at      INTEGER,                -- Unix ms
	updated_at       INTEGER NOT NULL,       -- Unix ms
	run_id           INTEGER REFERENCES runs (id)
) STRICT;

-- Append-only log of HTTP transactions. Rows are only ever appended in rowid
-- order, which keeps pages full; there is deliberately no index (the log is
-- read per device only for diagnostics).
CREATE TABLE attempts (
	device      INTEGER NOT NULL REFERENCES devices (id),
	run_id      INTEGER REFERENCES runs (id),
	kind        INTEGER NOT NULL CHECK (kind BETWEEN 1 AND 3), -- 1 register, 2 poll, 3 lookup
	http_status INTEGER NOT NULL,            -- 0 = transport error
	error_code  INTEGER NOT NULL,
	request_id  ANY,
	latency_us  INTEGER NOT NULL,
	at          INTEGER NOT NULL             -- Unix ms
) STRICT;
