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
fingerprint differs from the one the ledger recorded for the device is refused.

--report-columns carries columns of the manifest into the report: those the
manifest format does not define and provision ignores (an MES export's hub,
line or batch), named as in the manifest's header, joined by registration id.
Each becomes one more CSV column after payload; in JSON lines they are the
object "extra". Devices the manifest does not list get empty values. --column
maps the manifest's columns as provision does.

Several --ledger values (or a quoted glob) merge the ledgers of several
stations into one report: a ledger column first (the station: the ledger
file's name without its extension, or NAME of --station NAME=PATH), a row per
device per ledger holding it, and the totals per station on stderr. A device
two ledgers record differently (state, IoT hub or device id) is a conflict:
both rows are written, both are listed, and the command exits 3 unless
--allow-conflicts. With --format html the ledgers make one page: the totals
per station, charts over all stations, and the station of each run and of
each device that needs attention.`,
		"dps-batch report --ledger devices.ledger --out report.csv",
		"dps-batch report --ledger devices.ledger --state failed,disabled --out failures.csv",
		"dps-batch report --ledger devices.ledger --format jsonl --out - | jq .",
		"dps-batch report --ledger devices.ledger --format html --out run.html",
		"dps-batch report --ledger devices.ledger --manifest devices.csv --report-columns hub,line --out report.csv",
		"dps-batch report --ledger devices.ledger --state assigned --per-device flash/",
		"dps-batch report --ledger devices.ledger --state assigned --per-device flash/ --with-keys \\\n    --manifest devices.csv --group-key-file group.key",
		"dps-batch report --ledger 'line-*.ledger' --out fleet.csv",
		"dps-batch report --ledger 'line-*.ledger' --format html --out fleet.html",
		"dps-batch report --station east=/mnt/east/devices.ledger --station west=/mnt/west/devices.ledger --out fleet.csv")
	lf := addLedgerFlags(fs)
	ledgerPath := &lf.first
	out := fs.String("out", "-", "output `file`; - writes to stdout")
	format := fs.String("format", "csv", "output `format`: csv, jsonl, or html (a self-contained run report with charts)")
	stateList := fs.String("state", "", "only devices in these comma-separated `states` (pending, registering, assigning, assigned, disabled, failed, retryable); empty = all")
	perDevice := fs.String("per-device", "", "write one JSON file per device into `directory` (instead of --out)")
	force := fs.Bool("force", false, "with --per-device: replace existing files")
	withKeys := fs.Bool("with-keys", false, "with --per-device: add each device's symmetric key (needs --manifest; files are 0600)")
	manifestPath := fs.String("manifest", "", "with --with-keys or --report-columns: the manifest `file` the devices were provisioned from")
	reportColumns := fs.String("report-columns", "", "carry these comma-separated `columns` of --manifest, ones provision ignores (e.g. hub,line), into the report (CSV columns, JSON lines \"extra\")")
	var strict bool
	var columns manifests.ColumnMap
	addManifestFlags(fs, &strict, &columns)
	fs.Lookup("strict").Usage = "read --manifest as provision --strict does: refuse columns dps-batch does not know (so not with --report-columns)"
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
	if *format == string(report.HTML) {
		return writeHTMLReport(ctx, e, set, lf, *out)
	}
	f, err := report.ParseFormat(*format)
	if err != nil {
		return usagef("--format csv", "%v", err)
	}
	states, err := parseStates(*stateList)
	if err != nil {
		return err
	}
	extra, err := parseReportColumns(*reportColumns, f)
	if err != nil {
		return err
	}
	const perDeviceExample = "dps-batch report --ledger devices.ledger --state assigned --per-device flash/"
	const columnsExample = "dps-batch report --ledger devices.ledger --manifest devices.csv --report-columns hub,line"
	if *perDevice == "" {
		for _, name := range []string{"force", "with-keys", "group-key-file", "group-key-env"} {
			if set[name] {
				return usagef(perDeviceExample, "--%s applies to --per-device files only", name)
			}
		}
		if set["report-columns"] {
			if err := requireFlag(fs, "manifest", *manifestPath, columnsExample); err != nil {
				return err
			}
		} else if set["manifest"] {
			return usagef(columnsExample, "--manifest is read only with --report-columns (or with --per-device DIR --with-keys)")
		}
	} else {
		for _, name := range []string{"out", "format", "report-columns"} {
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
	for _, name := range []string{"column", "strict"} {
		if set[name] && *manifestPath == "" {
			return usagef(columnsExample+" --column registration_id=serial_number", "--%s says how to read --manifest, which is not given", name)
		}
	}
	if strict && len(extra) > 0 {
		return usagef(columnsExample, "--strict refuses the manifest columns dps-batch does not know, and --report-columns carries such columns: leave out --strict")
	}
	mopts := manifests.Options{Strict: strict, Columns: columns, IgnoreCSRColumns: true}
	if err := lf.check(mergeExample); err != nil {
		return err
	}
	if lf.merged() {
		return reportMerged(ctx, e, lf, mergedReport{out: *out, format: f, states: states, perDevice: *perDevice,
			manifest: manifestRead{path: *manifestPath, opts: mopts, extra: extra}})
	}
	led, err := openForReading(ctx, *ledgerPath, "dps-batch report --ledger devices.ledger --out report.csv")
	if err != nil {
		return err
	}
	defer led.Close()

	if *perDevice != "" {
		return writePerDevice(ctx, e, led, *perDevice, states, *force, *withKeys,
			manifestRead{path: *manifestPath, opts: mopts, groupKeyEnv: *groupKeyEnv}, *groupKeyFile)
	}
	opts := report.Options{States: states}
	if len(extra) > 0 {
		m, err := readManifest(ctx, manifestRead{path: *manifestPath, opts: mopts, extra: extra})
		if err != nil {
			return err
		}
		opts.Extra = report.ExtraColumns{Names: extra, Values: m.values}
	}
	if *out == "-" {
		_, err := report.WriteWith(ctx, led, e.stdout, f, opts)
		return err
	}
	// Write to a temporary file and rename, so a failed export never leaves
	// a truncated report where a good one was.
	tmp, err := os.CreateTemp(filepath.Dir(*out), ".report-*")
	if err != nil {
		return fmt.Errorf("create report %s: %w", *out, err)
	}
	defer os.Remove(tmp.Name())
	n, err := report.WriteWith(ctx, led, tmp, f, opts)
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

// parseReportColumns reads --report-columns: names trimmed and in lower
// case (as the manifest reader spells its header), each once. In a CSV
// report a name may not be one of the report's own columns.
func parseReportColumns(list string, f report.Format) ([]string, error) {
	var names []string
	for _, n := range strings.Split(list, ",") {
		n = strings.ToLower(strings.TrimSpace(n))
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if strings.TrimSpace(list) != "" && len(names) == 0 {
		return nil, usagef("--report-columns hub,line", "--report-columns %q names no column", list)
	}
	for _, n := range names {
		if f != report.JSONLines && slices.Contains(report.Columns(), n) {
			return nil, usagef("--format jsonl (it nests the manifest's columns under \"extra\")",
				"--report-columns %s: a CSV report has its own %s column; a manifest column of that name can be carried into a JSON lines report only", n, n)
		}
	}
	return names, nil
}

// writePerDevice is report --per-device.
func writePerDevice(ctx context.Context, e *env, led *ledger.Ledger, dir string, states []ledger.State,
	force, withKeys bool, m manifestRead, groupKeyFile string) error {
	opts := report.PerDeviceOptions{States: states, Force: force}
	if withKeys {
		groupKey, err := readGroupKey(e, groupKeyFile, m.groupKeyEnv)
		if err != nil {
			return err
		}
		m.keys, m.opts.GroupKey = true, groupKey
		keys, err := readManifest(ctx, m)
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

// manifestRead says what report reads from a manifest: keys for
// --per-device --with-keys, the columns of --report-columns, or both.
type manifestRead struct {
	path        string
	opts        manifests.Options // Strict and Columns, as provision reads it; GroupKey with keys
	keys        bool              // read each row's key
	groupKeyEnv string            // where the group key comes from, for messages
	extra       []string          // extra columns to carry, lower case
}

// manifestRow is what report keeps of one manifest row.
type manifestRow struct {
	manifestKey          // with manifestRead.keys
	line        int      // its line in the manifest
	extra       []string // values of manifestRead.extra, in order
}

// manifestIndex is a manifest's rows by registration id, for report.
type manifestIndex struct {
	path string
	rows map[string]manifestRow
}

// readManifest reads the manifest of m.path as provision reads it (with
// --strict and --column), keeping what m asks for of every row. Every
// column of m.extra must be one of the manifest's extra columns; a device
// listed twice with different values of them is refused. With m.keys, X.509
// rows are recorded without reading their files, and a row that gives no
// key is recorded with its reason, which matters only if its device is
// reported.
func readManifest(ctx context.Context, m manifestRead) (*manifestIndex, error) {
	rd, err := manifests.OpenWith(m.path, m.opts)
	if err != nil {
		return nil, usagef("--manifest: the manifest the devices were provisioned from, with the --column (and --strict) flags provision was given",
			"%v", err)
	}
	defer rd.Close()
	if err := checkExtraColumns(m, rd.ExtraColumns()); err != nil {
		return nil, err
	}
	mi := &manifestIndex{path: m.path, rows: map[string]manifestRow{}}
	var conflicts []string // devices listed twice with different extra values
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		row, err := rd.Next()
		if err == io.EOF {
			break
		}
		var p *manifests.Problem
		if errors.As(err, &p) {
			return nil, usagef("fix the manifest (dps-batch provision --dry-run checks it)", "manifest %s: %v", m.path, err)
		}
		if err != nil {
			return nil, fmt.Errorf("read manifest %s: %w", m.path, err)
		}
		r := manifestRow{line: row.Line}
		if m.keys {
			r.manifestKey = rowKey(rd, row, m)
		}
		for _, name := range m.extra {
			v, _ := row.Extra.Get(name)
			r.extra = append(r.extra, strings.Clone(v)) // not the whole row's values
		}
		if prev, dup := mi.rows[row.RegistrationID]; dup {
			r.manifestKey = manifestKey{err: fmt.Errorf("device %s appears more than once in manifest %s", row.RegistrationID, m.path)}
			if !slices.Equal(prev.extra, r.extra) {
				conflicts = append(conflicts, fmt.Sprintf("%s (rows %d and %d)", row.RegistrationID, prev.line, row.Line))
			}
		}
		mi.rows[row.RegistrationID] = r
	}
	if len(conflicts) > 0 {
		list := strings.Join(conflicts[:min(len(conflicts), 3)], ", ")
		if len(conflicts) > 3 {
			list += fmt.Sprintf(" and %d more", len(conflicts)-3)
		}
		return nil, usagef("list each device once (dps-batch provision --dry-run finds duplicates)",
			"manifest %s lists devices twice with different values of --report-columns %s: %s", m.path, strings.Join(m.extra, ","), list)
	}
	return mi, nil
}

// checkExtraColumns refuses a --report-columns name that is not one of
// the manifest's extra columns, listing those it has.
func checkExtraColumns(m manifestRead, have []string) error {
	for _, name := range m.extra {
		if slices.Contains(have, name) {
			continue
		}
		if len(have) == 0 {
			return usagef("leave out --report-columns, or give the manifest export that has the column",
				"--report-columns %s: manifest %s has no extra columns (columns dps-batch does not read itself), so it has nothing to carry into the report", name, m.path)
		}
		return usagef("--report-columns "+strings.Join(have, ","),
			"--report-columns %s: manifest %s has no extra column %q; its extra columns (those dps-batch does not read itself) are: %s",
			name, m.path, name, strings.Join(have, ", "))
	}
	return nil
}

// rowKey is what a manifest row says of its device's key.
func rowKey(rd *manifests.Reader, row manifests.Row, m manifestRead) manifestKey {
	var k manifestKey
	switch {
	case row.CertPath != "" || row.KeyPath != "" || row.ChainPath != "":
		if row.SymmetricKey != "" {
			k.err = fmt.Errorf("device %s: manifest row %d has both X.509 and symmetric_key credentials", row.RegistrationID, row.Line)
		}
	case row.SymmetricKey == "" && m.opts.GroupKey == nil:
		k.err = fmt.Errorf("device %s is a group device (manifest row %d has no credentials), and no group key was given: use --group-key-file FILE or the environment variable %s",
			row.RegistrationID, row.Line, m.groupKeyEnv)
	default:
		dev, problems := rd.Load(row, m.opts)
		if dev == nil {
			msg := "does not load"
			for _, p := range problems {
				if p.Severity == manifests.SeverityError {
					msg = p.Error()
					break
				}
			}
			k.err = fmt.Errorf("device %s: manifest %s: %s", row.RegistrationID, m.path, msg)
			break
		}
		k.key = base64.StdEncoding.EncodeToString(dev.SymmetricKey)
		k.fingerprint = dev.Fingerprint
	}
	return k
}

// values is report.ExtraColumns.Values: the device's values of the
// carried columns; nil for a device the manifest does not list.
func (mi *manifestIndex) values(registrationID string) []string {
	return mi.rows[registrationID].extra
}

// key is report.PerDeviceOptions.Key: the device's base64 key from the
// manifest, checked against the fingerprint the ledger recorded when the
// device was provisioned.
func (mi *manifestIndex) key(d ledger.Device) (string, error) {
	r, ok := mi.rows[d.RegistrationID]
	k := r.manifestKey
	switch {
	case !ok:
		return "", fmt.Errorf("device %s is not in manifest %s", d.RegistrationID, mi.path)
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
	ledger.StateAssigned, ledger.StateIssuedLost, ledger.StateDisabled, ledger.StateFailed, ledger.StateRetryable}

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
