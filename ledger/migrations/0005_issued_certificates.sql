-- Schema version 5: certificates DPS issues at registration.
--
-- When a device sends a CSR with its registration, DPS hands the issued
-- certificate chain over once, in the final operation result. The runner
-- keeps it here, then writes it to a file (durably), then records the device
-- assigned with what identifies the certificate.
--
-- cert_lost = 1 marks a device DPS assigned whose issued certificate never
-- reached a durable file (the answer was lost, or the process died before
-- the write): the Go state "issued-lost". It is a column, not a new state
-- code, because the state column's CHECK constraint cannot be widened
-- without rebuilding the table the attempt log refers to; such a device is
-- stored with the code of "assigned" (DPS did assign it) and cert_lost = 1.

ALTER TABLE devices ADD COLUMN issued_fingerprint TEXT    NOT NULL DEFAULT ''; -- "sha256:" + hex of the leaf DER
ALTER TABLE devices ADD COLUMN issued_serial      TEXT    NOT NULL DEFAULT ''; -- leaf serial, upper-case hex
ALTER TABLE devices ADD COLUMN issued_not_after   INTEGER;                      -- leaf notAfter, Unix ms
ALTER TABLE devices ADD COLUMN cert_lost          INTEGER NOT NULL DEFAULT 0 CHECK (cert_lost IN (0, 1));

-- csr_sent = 1: the device's last register request carried a CSR, so its
-- final answer carries a certificate to keep, whatever the next run's flags.
ALTER TABLE devices ADD COLUMN csr_sent           INTEGER NOT NULL DEFAULT 0 CHECK (csr_sent IN (0, 1));
-- The issued chain (PEM, leaf first) from DPS's answer until its file is
-- durable: written before the file, cleared once the device is recorded
-- assigned. A crash or an unwritable folder in between loses nothing: the
-- next run writes the file from here. Certificates are public; no key is
-- ever stored.
ALTER TABLE devices ADD COLUMN issued_chain       TEXT    NOT NULL DEFAULT '';
