-- Schema version 2: what exactly-once rests on.
--
-- A re-registration campaign (--reprovision, --retry-failed) is a record, not
-- a time held in memory, so that a run killed mid-campaign is continued by the
-- same command without registering any device twice. Each device remembers
-- the campaign it was last registered in, when its last register request was
-- sent (a request whose answer was lost may still take effect for a while),
-- and the DPS registration record of its last final answer, so that a lookup
-- showing that same record is not mistaken for a new registration's answer.

CREATE TABLE campaigns (
	id          INTEGER PRIMARY KEY,
	kind        TEXT    NOT NULL,            -- "reprovision", "retry-failed" or "reprovision+retry-failed"
	started_at  INTEGER NOT NULL,            -- Unix ms
	finished_at INTEGER,                     -- Unix ms; NULL while open
	outcome     TEXT    NOT NULL DEFAULT '', -- "completed" or "abandoned"
	run_id      INTEGER REFERENCES runs (id), -- the run that started it
	options     TEXT    NOT NULL DEFAULT '{}'
) STRICT;

ALTER TABLE devices ADD COLUMN campaign_id INTEGER NOT NULL DEFAULT 0; -- campaign of the device's last registration, 0 = none
ALTER TABLE devices ADD COLUMN put_at      INTEGER;                    -- Unix ms: last register request that may have taken effect
ALTER TABLE devices ADD COLUMN dps_etag    TEXT NOT NULL DEFAULT '';   -- DPS record of the last final answer: etag,
ALTER TABLE devices ADD COLUMN dps_updated TEXT NOT NULL DEFAULT '';   -- lastUpdatedDateTimeUtc as DPS wrote it,
ALTER TABLE devices ADD COLUMN dps_created TEXT NOT NULL DEFAULT '';   -- createdDateTimeUtc as DPS wrote it
