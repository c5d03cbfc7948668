-- Schema version 3: what to flash comes back too.
--
-- The custom allocation payload DPS returned with a device's final answer
-- (registrationState.payload): a compact JSON object of at most 16 KB (see
-- KeptPayload in device.go), '' when DPS returned none. It is what a
-- flashing station may need besides the hub and device id.

ALTER TABLE devices ADD COLUMN returned_payload TEXT NOT NULL DEFAULT '';
