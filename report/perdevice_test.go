package report

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/dps-batch/dps-batch/ledger"
)

// readDir returns the names in dir, sorted.
func readDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

func TestWritePerDevice(t *testing.T) {
	ctx := context.Background()
	led := fixedLedger(t)
	dir := filepath.Join(t.TempDir(), "flash")

	n, err := WritePerDevice(ctx, led, dir, PerDeviceOptions{States: []ledger.State{ledger.StateAssigned, ledger.StateFailed}})
	if err != nil || n != 2 {
		t.Fatalf("WritePerDevice = %d, %v; want 2 files", n, err)
	}
	if got, want := readDir(t, dir), []string{"dev-00001.json", "dev-00002.json"}; !slices.Equal(got, want) {
		t.Errorf("files %v, want %v", got, want)
	}
	body, err := os.ReadFile(filepath.Join(dir, "dev-00001.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := `{
  "registrationId": "dev-00001",
  "status": "assigned",
  "assignedHub": "hub-1.azure-devices.net",
  "deviceId": "dev-00001",
  "payload": {
    "line": 3,
    "firmware": "v1.2, \"stable\""
  }
}
`
	if string(body) != want {
		t.Errorf("dev-00001.json =\n%s\nwant\n%s", body, want)
	}
	var failed map[string]any
	if b, err := os.ReadFile(filepath.Join(dir, "dev-00002.json")); err != nil || json.Unmarshal(b, &failed) != nil {
		t.Fatalf("dev-00002.json: %v %s", err, b)
	}
	if len(failed) != 2 || failed["status"] != "failed" {
		t.Errorf("dev-00002.json = %v, want only registrationId and status", failed)
	}
	if runtime.GOOS != "windows" {
		for _, name := range []string{"dev-00001.json", "dev-00002.json"} {
			if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != 0o644 {
				t.Errorf("%s: mode %v err %v, want 0644", name, fi.Mode().Perm(), err)
			}
		}
	}

	// Again, over all devices: two files exist; nothing is written.
	if err := os.WriteFile(filepath.Join(dir, "dev-00002.json"), []byte("kept\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err = WritePerDevice(ctx, led, dir, PerDeviceOptions{})
	var perr *PerDeviceError
	if !errors.As(err, &perr) || n != 0 || perr.NExist != 2 {
		t.Fatalf("WritePerDevice over existing files = %d, %v; want a PerDeviceError for 2 files", n, err)
	}
	for _, s := range []string{"nothing written", "2 of the files exist already (dev-00001.json, dev-00002.json)", "--force replaces them"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
	if got := readDir(t, dir); len(got) != 2 {
		t.Errorf("files after refusal: %v, want the 2 there were", got)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "dev-00002.json")); string(b) != "kept\n" {
		t.Errorf("a refused run changed dev-00002.json: %q", b)
	}

	// --force replaces them, with the file mode of a new file.
	n, err = WritePerDevice(ctx, led, dir, PerDeviceOptions{Force: true})
	if err != nil || n != 5 {
		t.Fatalf("WritePerDevice with Force = %d, %v; want 5", n, err)
	}
	if got := readDir(t, dir); len(got) != 5 {
		t.Errorf("files %v, want 5 and no temporary file", got)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "dev-00002.json")); !strings.Contains(string(b), `"status": "failed"`) {
		t.Errorf("dev-00002.json not replaced: %s", b)
	}
	if fi, err := os.Stat(filepath.Join(dir, "dev-00002.json")); runtime.GOOS != "windows" && (err != nil || fi.Mode().Perm() != 0o644) {
		t.Errorf("replaced file mode %v err %v, want 0644", fi.Mode().Perm(), err)
	}
}

func TestWritePerDeviceKeys(t *testing.T) {
	ctx := context.Background()
	led := fixedLedger(t)
	dir := filepath.Join(t.TempDir(), "keys")
	keys := map[string]string{"dev-00001": "a2V5LW9uZQ==", "dev-00003": ""} // dev-00003 is an X.509 device

	// A device with no key stops everything before the first file.
	_, err := WritePerDevice(ctx, led, dir, PerDeviceOptions{Key: func(d ledger.Device) (string, error) {
		k, ok := keys[d.RegistrationID]
		if !ok {
			return "", fmt.Errorf("device %s is not in the manifest", d.RegistrationID)
		}
		return k, nil
	}})
	var perr *PerDeviceError
	if !errors.As(err, &perr) || perr.NKeyErr != 3 || !strings.Contains(err.Error(), "device dev-00002 is not in the manifest (and 2 more device(s) like it)") {
		t.Fatalf("WritePerDevice with missing keys: %v; want a PerDeviceError naming dev-00002 and 2 more", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the directory was created although nothing was written (%v)", err)
	}

	n, err := WritePerDevice(ctx, led, dir, PerDeviceOptions{States: []ledger.State{ledger.StateAssigned, ledger.StateDisabled},
		Key: func(d ledger.Device) (string, error) { return keys[d.RegistrationID], nil }})
	if err != nil || n != 2 {
		t.Fatalf("WritePerDevice with keys = %d, %v", n, err)
	}
	var f DeviceFile
	if b, err := os.ReadFile(filepath.Join(dir, "dev-00001.json")); err != nil || json.Unmarshal(b, &f) != nil || f.SymmetricKey != "a2V5LW9uZQ==" {
		t.Errorf("dev-00001.json = %+v (%v), want its key", f, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "dev-00003.json")); strings.Contains(string(b), "symmetricKey") {
		t.Errorf("dev-00003.json has a key field for a device without one:\n%s", b)
	}
	if runtime.GOOS != "windows" {
		for _, p := range []string{dir, filepath.Join(dir, "dev-00001.json"), filepath.Join(dir, "dev-00003.json")} {
			fi, err := os.Stat(p)
			want := os.FileMode(0o600)
			if p == dir {
				want = 0o700
			}
			if err != nil || fi.Mode().Perm() != want {
				t.Errorf("%s: mode %v err %v, want %v", p, fi.Mode().Perm(), err, want)
			}
		}
	}
}

// TestWritePerDeviceBadNames: a registration id that cannot be a file name
// (the ledger does not check ids) is refused before anything is written.
func TestWritePerDeviceBadNames(t *testing.T) {
	ctx := context.Background()
	led, err := ledger.Open(ctx, filepath.Join(t.TempDir(), "n.ledger"), ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer led.Close()
	for _, id := range []string{"ok-1", "../escape", `a\b`} {
		if err := led.Put(ctx, ledger.Device{RegistrationID: id, State: ledger.StateAssigned}); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	_, err = WritePerDevice(ctx, led, dir, PerDeviceOptions{})
	if err == nil || !strings.Contains(err.Error(), `2 registration id(s) cannot be file names on this system ("../escape", "a\\b")`) {
		t.Errorf("err = %v, want the two bad ids named", err)
	}
	if got := readDir(t, dir); len(got) != 0 {
		t.Errorf("files %v written despite the refusal", got)
	}
	if f := filepath.Join(dir, "..", "escape.json"); fileExists(f) {
		t.Errorf("%s was written outside the directory", f)
	}
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func TestFileName(t *testing.T) {
	for id, ok := range map[string]bool{"line3-0001": true, "a.b_c-": true, "": false, "a/b": false, `a\b`: false, "..": true,
		"urn:dev:1": runtime.GOOS != "windows"} {
		if name, got := FileName(id); got != ok || name != id+".json" {
			t.Errorf("FileName(%q) = %q, %v; want ok=%v", id, name, got, ok)
		}
	}
}
