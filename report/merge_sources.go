package report

import (
	"fmt"
	"path/filepath"
	"strings"
)

// SourceSpec is a ledger to merge, before it is opened: its station label
// and path.
type SourceSpec struct {
	Station, Path string
}

// StationName is the station label of a ledger file: its base name without
// the extension ("line-2" for /data/line-2.ledger; "devices.shard-0-of-3"
// for devices.shard-0-of-3.ledger).
func StationName(path string) string {
	base := filepath.Base(path)
	if ext := filepath.Ext(base); ext != "" && ext != base {
		base = strings.TrimSuffix(base, ext)
	}
	return base
}

// hasGlob reports whether a --ledger value is a pattern.
func hasGlob(s string) bool { return strings.ContainsAny(s, "*?[") }

// ResolveSources turns --ledger values (paths or glob patterns, each
// pattern matched in sorted order) and --station NAME=PATH labels into the
// ledgers to merge, in the order given: ledgers first, then stations not
// among them. A --station whose PATH is one of the ledgers labels that
// ledger. A ledger named twice is merged once; two ledgers with one label
// are refused, as is a pattern that matches nothing.
func ResolveSources(ledgers, stations []string) ([]SourceSpec, error) {
	var specs []SourceSpec
	at := map[string]int{} // cleaned path -> index in specs
	add := func(path, station string) {
		key := filepath.Clean(path)
		if i, ok := at[key]; ok {
			if station != "" {
				specs[i].Station = station
			}
			return
		}
		at[key] = len(specs)
		if station == "" {
			station = StationName(path)
		}
		specs = append(specs, SourceSpec{Station: station, Path: path})
	}
	for _, l := range ledgers {
		if !hasGlob(l) {
			add(l, "")
			continue
		}
		matches, err := filepath.Glob(l)
		if err != nil {
			return nil, fmt.Errorf("--ledger %q: %v", l, err)
		}
		if len(matches) == 0 {
			return nil, fmt.Errorf("--ledger %q matches no file", l)
		}
		for _, m := range matches {
			add(m, "")
		}
	}
	for _, s := range stations {
		name, path, ok := strings.Cut(s, "=")
		name, path = strings.TrimSpace(name), strings.TrimSpace(path)
		if !ok || name == "" || path == "" {
			return nil, fmt.Errorf("--station %q: want NAME=PATH, e.g. --station line-2=/data/line2/devices.ledger", s)
		}
		if hasGlob(path) {
			return nil, fmt.Errorf("--station %q: PATH must name one ledger file, not a pattern", s)
		}
		add(path, name)
	}
	seen := map[string]string{}
	for _, sp := range specs {
		if other, dup := seen[sp.Station]; dup {
			return nil, fmt.Errorf("ledgers %s and %s would both be station %q in the report: label them with --station NAME=PATH", other, sp.Path, sp.Station)
		}
		seen[sp.Station] = sp.Path
	}
	return specs, nil
}
