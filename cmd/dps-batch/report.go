package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
	"github.com/dps-batch/dps-batch/report"
)

func runReport(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "report", `Export one row per device from a ledger: registration_id, status, assigned_hub,
device_id, substatus, operation_id, error_code, error_message, hint, attempts,
first_attempt_at, finished_at, request_id, payload (the custom allocation
payload DPS returned, a JSON object). The ledger is only read; a run may be in
progress.

--per-device DIR writes one JSON file per device instead, DIR/<registration
id>.json, for a flashing station: registrationId, status, assignedHub, deviceId
and payload (when DPS returned one). Existing files are kept unless --force; if
any would be replaced, nothing is written. --with-keys adds symmetricKey, the
device's key: the manifest's individual key, or the key derived from the group
key (from --group-key-file or the --group-key-env variable, never the command
line); such files are written with mode 0600, and a new DIR with 0700. X.509
devices get no key (flash their certificate and key files). A key whose
fingerprint differs from the one the ledger recorded for the device is refused.`,
		"dps-batch report --ledger devices.ledger --out report.csv",
		"dps-batch report --ledger devices.ledger --state failed,disabled --out failures.csv",
		"dps-batch report --ledger devices.ledger --format jsonl --out - | jq .",
		"dps-batch report --ledger devices.ledger --state assigned --per-device flash/",
		"dps-batch report --ledger devices.ledger --state assigned --per-device flash/ --with-keys \\\n    --manifest devices.csv --group-key-file group.key")
	ledgerPath := fs.String("ledger", "", "ledger `file` to read; required")
	out := fs.String("out", "-", "output `file`; - writes to stdout")
	format := fs.String("format", "csv", "output `format`: csv or jsonl")
	stateList := fs.String("state", "", "only devices in these comma-separated `states` (pending, registering, assigning, assigned, disabled, failed, retryable); empty = all")
	perDevice := fs.String("per-device", "", "write one JSON file per device into `directory` (instead of --out)")
	force := fs.Bool("force", false, "with --per-device: replace existing files")
	withKeys := fs.Bool("with-keys", false, "with --per-device: add each device's symmetric key (needs --manifest; files are 0600)")
	manifestPath := fs.String("manifest", "", "with --with-keys: the manifest `file` the devices were provisioned from")
	groupKeyFile := fs.String("group-key-file", "", "with --with-keys: `file` holding the base64 group enrollment key, to derive group devices' keys")
	groupKeyEnv := fs.String("group-key-env", "DPS_GROUP_KEY", "with --with-keys: environment `variable` holding the base64 group key (used when --group-key-file is not given)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireFlag(fs, "ledger", *ledgerPath, "dps-batch report --ledger devices.ledger --out report.csv"); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	f, err := report.ParseFormat(*format)
	if err != nil {
		return usagef("--format csv", "%v", err)
	}
	states, err := parseStates(*stateList)
	if err != nil {
		return err
	}
	const perDeviceExample = "dps-batch report --ledger devices.ledger --state assigned --per-device flash/"
	if *perDevice == "" {
		for _, name := range []string{"force", "with-keys", "manifest", "group-key-file", "group-key-env"} {
			if set[name] {
				return usagef(perDeviceExample, "--%s applies to --per-device files only", name)
			}
		}
	} else {
		for _, name := range []string{"out", "format"} {
			if set[name] {
				return usagef(perDeviceExample, "--%s and --per-device exclude each other: --per-device writes one JSON file per device", name)
			}
		}
		if !*withKeys {
			for _, name := range []string{"manifest", "group-key-file", "group-key-env"} {
				if set[name] {
					return usagef(perDeviceExample+" --with-keys --manifest devices.csv", "--%s is read only with --with-keys", name)
				}
			}
		} else if err := requireFlag(fs, "manifest", *manifestPath, perDeviceExample+" --with-keys --manifest devices.csv"); err != nil {
			return err
		}
	}
	led, err := openForReading(ctx, *ledgerPath, "dps-batch report --ledger devices.ledger --out report.csv")
	if err != nil {
		return err
	}
	defer led.Close()

	if *perDevice != "" {
		return writePerDevice(ctx, e, led, *perDevice, states, *force, *withKeys, *manifestPath, *groupKeyFile, *groupKeyEnv)
	}
	if *out == "-" {
		_, err := report.Write(ctx, led, e.stdout, f, states)
		return err
	}
	// Write to a temporary file and rename, so a failed export never leaves
	// a truncated report where a good one was.
	tmp, err := os.CreateTemp(filepath.Dir(*out), ".report-*")
	if err != nil {
		return fmt.Errorf("create report %s: %w", *out, err)
	}
	defer os.Remove(tmp.Name())
	n, err := report.Write(ctx, led, tmp, f, states)
	if err == nil {
		err = tmp.Chmod(0o644) // a report is for sharing, unlike CreateTemp's 0600
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write report %s: %w", *out, err)
	}
	if err := os.Rename(tmp.Name(), *out); err != nil {
		return fmt.Errorf("write report %s: %w", *out, err)
	}
	fmt.Fprintf(e.stderr, "Wrote %d device(s) to %s\n", n, *out)
	return nil
}

// writePerDevice is report --per-device.
func writePerDevice(ctx context.Context, e *env, led *ledger.Ledger, dir string, states []ledger.State,
	force, withKeys bool, manifestPath, groupKeyFile, groupKeyEnv string) error {
	opts := report.PerDeviceOptions{States: states, Force: force}
	if withKeys {
		groupKey, err := readGroupKey(e, groupKeyFile, groupKeyEnv)
		if err != nil {
			return err
		}
		keys, err := readManifestKeys(ctx, manifestPath, groupKey, groupKeyEnv)
		if err != nil {
			return err
		}
		opts.Key = keys.key
	}
	n, err := report.WritePerDevice(ctx, led, dir, opts)
	var perr *report.PerDeviceError
	if errors.As(err, &perr) {
		hint := "dps-batch report --help"
		switch {
		case perr.NExist > 0:
			hint = "add --force to replace the existing files, or choose another --per-device directory"
		case perr.NKeyErr > 0:
			hint = "give the manifest the devices were provisioned from, and the same group key"
		}
		return usagef(hint, "%v", err)
	}
	if err != nil {
		return err
	}
	if withKeys {
		fmt.Fprintf(e.stderr, "Wrote %d device file(s) with keys to %s (mode 0600: keep them off shared folders)\n", n, dir)
	} else {
		fmt.Fprintf(e.stderr, "Wrote %d device file(s) to %s\n", n, dir)
	}
	return nil
}

// readGroupKey reads the group key from the file or environment variable;
// nil when neither is set.
func readGroupKey(e *env, file, envName string) ([]byte, error) {
	var text, from string
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, usagef("--group-key-file FILE with the base64 key on one line", "read group key: %v", err)
		}
		text, from = string(b), "--group-key-file "+file
	} else if envName != "" {
		text, from = e.getenv(envName), "environment variable "+envName
	}
	if strings.TrimSpace(text) == "" {
		return nil, nil
	}
	key, err := manifests.DecodeKey(text)
	if err != nil {
		return nil, usagef("copy the group's primary key from the DPS enrollment group page", "the group key in %s: %v", from, err)
	}
	return key, nil
}

// manifestKey is what a manifest says of one device's key.
type manifestKey struct {
	key         string // base64; "" for X.509 devices
	fingerprint string // of key, as the ledger records it; "" for X.509 devices
	err         error  // why the row gives no key
}

// manifestKeys maps registration ids to their keys, for report --with-keys.
type manifestKeys struct {
	path string
	rows map[string]manifestKey
}

// readManifestKeys reads the key of every row of the manifest. X.509 rows
// are recorded without reading their files. A row that gives no key is
// recorded with its reason, which matters only if its device is reported.
func readManifestKeys(ctx context.Context, path string, groupKey []byte, groupKeyEnv string) (*manifestKeys, error) {
	rd, err := manifests.Open(path)
	if err != nil {
		return nil, usagef("--manifest: the manifest the devices were provisioned from", "%v", err)
	}
	defer rd.Close()
	mk := &manifestKeys{path: path, rows: map[string]manifestKey{}}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		row, err := rd.Next()
		if err == io.EOF {
			return mk, nil
		}
		var p *manifests.Problem
		if errors.As(err, &p) {
			return nil, usagef("fix the manifest (dps-batch provision --dry-run checks it)", "manifest %s: %v", path, err)
		}
		if err != nil {
			return nil, fmt.Errorf("read manifest %s: %w", path, err)
		}
		var k manifestKey
		switch {
		case row.CertPath != "" || row.KeyPath != "" || row.ChainPath != "":
			if row.SymmetricKey != "" {
				k.err = fmt.Errorf("device %s: manifest row %d has both X.509 and symmetric_key credentials", row.RegistrationID, row.Line)
			}
		case row.SymmetricKey == "" && groupKey == nil:
			k.err = fmt.Errorf("device %s is a group device (manifest row %d has no credentials), and no group key was given: use --group-key-file FILE or the environment variable %s",
				row.RegistrationID, row.Line, groupKeyEnv)
		default:
			dev, problems := rd.Load(row, manifests.Options{GroupKey: groupKey})
			if dev == nil {
				msg := "does not load"
				for _, p := range problems {
					if p.Severity == manifests.SeverityError {
						msg = p.Error()
						break
					}
				}
				k.err = fmt.Errorf("device %s: manifest %s: %s", row.RegistrationID, path, msg)
				break
			}
			k.key = base64.StdEncoding.EncodeToString(dev.SymmetricKey)
			k.fingerprint = dev.Fingerprint
		}
		if _, dup := mk.rows[row.RegistrationID]; dup {
			k = manifestKey{err: fmt.Errorf("device %s appears more than once in manifest %s", row.RegistrationID, path)}
		}
		mk.rows[row.RegistrationID] = k
	}
}

// key is report.PerDeviceOptions.Key: the device's base64 key from the
// manifest, checked against the fingerprint the ledger recorded when the
// device was provisioned.
func (mk *manifestKeys) key(d ledger.Device) (string, error) {
	k, ok := mk.rows[d.RegistrationID]
	switch {
	case !ok:
		return "", fmt.Errorf("device %s is not in manifest %s", d.RegistrationID, mk.path)
	case k.err != nil:
		return "", k.err
	case k.key == "":
		return "", nil // X.509
	case d.Fingerprint != "" && d.Fingerprint != k.fingerprint:
		return "", fmt.Errorf("device %s: the manifest's key is not the one it was provisioned with (fingerprint %s, the ledger recorded %s): wrong group key or manifest?",
			d.RegistrationID, k.fingerprint, d.Fingerprint)
	}
	return k.key, nil
}

// allStates lists the ledger states in lifecycle order.
var allStates = []ledger.State{ledger.StatePending, ledger.StateRegistering, ledger.StateAssigning,
	ledger.StateAssigned, ledger.StateDisabled, ledger.StateFailed, ledger.StateRetryable}

// parseStates reads a --state list; an unknown state is a usage error that
// lists the valid ones.
func parseStates(list string) ([]ledger.State, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	var out []ledger.State
	for _, s := range strings.Split(list, ",") {
		s = strings.ToLower(strings.TrimSpace(s))
		if s == "" {
			continue
		}
		i := slices.Index(allStates, ledger.State(s))
		if i < 0 {
			names := make([]string, len(allStates))
			for j, st := range allStates {
				names[j] = string(st)
			}
			return nil, usagef("--state failed,disabled", "unknown state %q in --state; the states are: %s", s, strings.Join(names, ", "))
		}
		if !slices.Contains(out, allStates[i]) {
			out = append(out, allStates[i])
		}
	}
	if len(out) == 0 {
		return nil, usagef("--state failed,disabled", "--state %q names no state; leave it out to report every device", list)
	}
	return out, nil
}

var _ io.Writer = (*os.File)(nil)
