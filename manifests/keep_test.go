package manifests

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestValidateKeepX509 checks that Validate hands over the first KeepX509
// usable X.509 devices, loaded, and nothing else: not symmetric-key rows,
// not bad rows, not duplicates.
func TestValidateKeepX509(t *testing.T) {
	fx := mustFixture(t)
	dir := t.TempDir()
	dev := func(id string) string {
		return fmt.Sprintf("%s,%s,%s,%s,,", id,
			filepath.Join(fx.dir, "devices", id+".pem"), filepath.Join(fx.dir, "devices", id+".key"), filepath.Join(fx.dir, "ca/intermediate.pem"))
	}
	path := writeManifest(t, dir, "m.csv", header,
		dev("dev-1"),                         // line 2: kept
		"sym-1,,,,MDEyMzQ1Njc4OWFiY2RlZg==,", // line 3: symmetric, never kept
		dev("dev-2"),                         // line 4: kept
		dev("dev-3"),                         // line 5: over the limit
	)
	opts := testOptions()
	opts.KeepX509 = 2
	s, err := Validate(context.Background(), path, opts, 0)
	if err != nil || !s.OK() {
		t.Fatalf("Validate: %v %s", err, problemStrings(s.Errors))
	}
	if got := slices.Sorted(maps.Keys(s.X509)); !slices.Equal(got, []int{2, 4}) {
		t.Fatalf("kept lines %v, want [2 4]", got)
	}
	for line, id := range map[int]string{2: "dev-1", 4: "dev-2"} {
		k := s.X509[line]
		d := k.Device
		if k.Row.Line != line || k.Row.RegistrationID != id {
			t.Errorf("line %d: kept row %+v, want line %d, id %s", line, k.Row, line, id)
		}
		if d.RegistrationID != id || d.Kind != KindX509 || d.Certificate == nil || d.Certificate.PrivateKey == nil {
			t.Errorf("line %d: got %+v, want loaded X.509 device %s", line, d, id)
			continue
		}
		if !bytes.Equal(d.Certificate.Certificate[0], fx.devCerts[id].Raw) || len(d.Certificate.Certificate) != 2 {
			t.Errorf("line %d: certificate chain is not %s's leaf + intermediate", line, id)
		}
	}

	// Kept devices hold private keys: printing or encoding them shows none.
	secret := fx.devKeys["dev-1"].(*ecdsa.PrivateKey).D.String()
	d1 := *s.X509[2].Device
	printed := fmt.Sprintf("%v %+v %#v %s %v", d1, d1, d1, &d1, s.X509)
	encoded, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	devJSON, err := json.Marshal(d1)
	if err != nil {
		t.Fatal(err)
	}
	for what, text := range map[string]string{"printed": printed, "Summary as JSON": string(encoded), "Device as JSON": string(devJSON)} {
		if strings.Contains(text, secret) {
			t.Errorf("%s shows the private key", what)
		}
	}
	if !strings.Contains(printed, "dev-1") {
		t.Errorf("printed device does not name it: %s", printed)
	}

	opts.KeepX509 = 0
	if s, _ = Validate(context.Background(), path, opts, 0); s.X509 != nil {
		t.Errorf("KeepX509 0: kept %d devices", len(s.X509))
	}

	// A duplicated id is an error; its rows are not handed over.
	dup := writeManifest(t, dir, "dup.csv", header, dev("dev-1"), dev("dev-1"))
	opts.KeepX509 = 10
	s, err = Validate(context.Background(), dup, opts, 0)
	if err != nil || s.OK() {
		t.Fatalf("duplicate manifest: err %v, problems %s", err, problemStrings(s.Errors))
	}
	if _, ok := s.X509[3]; ok {
		t.Error("the duplicate row (line 3) was kept")
	}
}

// TestValidateParallelOrder checks that loading rows in parallel leaves the
// report in file order and truncates the same problems on every run.
func TestValidateParallelOrder(t *testing.T) {
	fx := mustFixture(t)
	dir := t.TempDir()
	lines := []string{header}
	for i := range 3 * loadChunk {
		switch i % 3 {
		case 0: // a certificate whose CN is not the id: an error
			lines = append(lines, fmt.Sprintf("bad-%d,%s,%s,,,", i, filepath.Join(fx.dir, "devices/dev-1.pem"), filepath.Join(fx.dir, "devices/dev-1.key")))
		case 1:
			lines = append(lines, fmt.Sprintf("sym-%d,,,,MDEyMzQ1Njc4OWFiY2RlZg==,", i))
		default: // a row with too many fields: a read problem
			lines = append(lines, fmt.Sprintf("odd-%d,,,,,,,", i))
		}
	}
	path := writeManifest(t, dir, "m.csv", lines...)
	var first []string
	for run := range 5 {
		s, err := Validate(context.Background(), path, testOptions(), 100)
		if err != nil {
			t.Fatal(err)
		}
		if s.Rows != 3*loadChunk || len(s.Errors) != 100 || s.TruncatedErrors != 2*loadChunk-100 {
			t.Fatalf("run %d: rows %d, errors %d + %d truncated; want %d, 100 + %d", run, s.Rows, len(s.Errors), s.TruncatedErrors, 3*loadChunk, 2*loadChunk-100)
		}
		got := make([]string, len(s.Errors))
		for i, p := range s.Errors {
			got[i] = p.Error()
			if i > 0 && p.Line < s.Errors[i-1].Line {
				t.Fatalf("run %d: errors out of line order at %d", run, i)
			}
		}
		if s.Errors[99].Line != 151 { // rows alternate bad, good, odd from line 2: the 100th error is on line 151
			t.Errorf("run %d: last kept error on line %d, want 151", run, s.Errors[99].Line)
		}
		if run == 0 {
			first = got
		} else if !slices.Equal(got, first) {
			t.Fatalf("run %d reported different errors than run 0", run)
		}
	}
}
