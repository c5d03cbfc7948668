package certs

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// readManifest returns the manifest rows, header included.
func readManifest(t *testing.T, path string) [][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return rows
}

func TestGenerateFleet(t *testing.T) {
	tests := []struct {
		name      string
		opts      FleetOptions
		wantIDs   []string // first and last
		wantChain string   // chain_path column
		wantInter bool
	}{
		{"defaults", FleetOptions{Count: 12}, []string{"dev-00001", "dev-00012"}, "ca/intermediate.pem", true},
		{"root chain, prefix, one worker", FleetOptions{Count: 3, Prefix: "sensor-", Chain: ChainRoot, Workers: 1}, []string{"sensor-00001", "sensor-00003"}, "", false},
		{"rsa", FleetOptions{Count: 2, KeyType: RSA2048}, []string{"dev-00001", "dev-00002"}, "ca/intermediate.pem", true},
		{"ed25519, more workers than devices", FleetOptions{Count: 2, KeyType: Ed25519, Workers: 16}, []string{"dev-00001", "dev-00002"}, "ca/intermediate.pem", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.opts.Dir = dir
			var progressCalls atomic.Int64
			tt.opts.Progress = func(int) { progressCalls.Add(1) }
			fl, err := GenerateFleet(context.Background(), tt.opts)
			if err != nil {
				t.Fatalf("GenerateFleet: %v", err)
			}
			if got, want := int(progressCalls.Load()), tt.opts.Count; got != want {
				t.Errorf("Progress called %d times, want %d", got, want)
			}
			if got, want := len(fl.RegistrationIDs), tt.opts.Count; got != want {
				t.Fatalf("len(RegistrationIDs) = %d, want %d", got, want)
			}
			if got, want := fl.RegistrationIDs[0]+" "+fl.RegistrationIDs[len(fl.RegistrationIDs)-1], strings.Join(tt.wantIDs, " "); got != want {
				t.Errorf("ids = %s, want %s", got, want)
			}
			if got, want := fl.ManifestPath, filepath.Join(dir, "manifest.csv"); got != want {
				t.Errorf("ManifestPath = %q, want %q", got, want)
			}
			if got := fl.IntermediateCertPath != ""; got != tt.wantInter {
				t.Errorf("IntermediateCertPath = %q, want set: %v", fl.IntermediateCertPath, tt.wantInter)
			}
			wantGroup := fl.Root
			if tt.wantInter {
				if fl.GroupCA == fl.Root {
					t.Errorf("GroupCA is the root, want the intermediate")
				}
				wantGroup = fl.GroupCA
				if got := readCerts(t, fl.IntermediateCertPath); !got[0].Equal(fl.GroupCA.Cert) {
					t.Errorf("%s does not hold GroupCA", fl.IntermediateCertPath)
				}
				checkKeyFile(t, fl.IntermediateKeyPath, fl.GroupCA.Key.Public())
			}
			if fl.GroupCA != wantGroup {
				t.Errorf("GroupCA = %q, want %q", fl.GroupCA.Cert.Subject.CommonName, wantGroup.Cert.Subject.CommonName)
			}
			if got := readCerts(t, fl.RootCertPath); !got[0].Equal(fl.Root.Cert) {
				t.Errorf("%s does not hold the root", fl.RootCertPath)
			}
			checkKeyFile(t, fl.RootKeyPath, fl.Root.Key.Public())

			rows := readManifest(t, fl.ManifestPath)
			if got, want := strings.Join(rows[0], ","), "registration_id,cert_path,key_path,chain_path"; got != want {
				t.Errorf("header = %q, want %q", got, want)
			}
			if got, want := len(rows)-1, tt.opts.Count; got != want {
				t.Fatalf("manifest has %d rows, want %d", got, want)
			}
			roots := pool(fl.Root.Cert)
			for i, row := range rows[1:] {
				id := fl.RegistrationIDs[i]
				want := []string{id, "devices/" + id + ".pem", "devices/" + id + ".key", tt.wantChain}
				if strings.Join(row, ",") != strings.Join(want, ",") {
					t.Errorf("row %d = %q, want %q", i+2, row, want)
					continue
				}
				// Paths are relative to the fleet directory.
				certs := readCerts(t, filepath.Join(dir, row[1]))
				if len(certs) != 1 {
					t.Errorf("%s: %d certificates, want the leaf only", row[1], len(certs))
				}
				leaf := certs[0]
				if leaf.Subject.CommonName != id {
					t.Errorf("%s: CN = %q, want %q", row[1], leaf.Subject.CommonName, id)
				}
				checkKeyFile(t, filepath.Join(dir, row[2]), leaf.PublicKey) // the key matches the certificate
				inter := x509.NewCertPool()
				if row[3] != "" {
					for _, c := range readCerts(t, filepath.Join(dir, row[3])) {
						inter.AddCert(c)
					}
				}
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
					t.Errorf("%s does not verify to the root: %v", row[1], err)
				}
			}
			if got, want := listDir(t, dir), "ca devices manifest.csv"; got != want {
				t.Errorf("files = %q, want %q", got, want)
			}
		})
	}
}

func TestGenerateFleetForce(t *testing.T) {
	dir := t.TempDir()
	first, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(first.RootCertPath)
	if err != nil {
		t.Fatal(err)
	}

	_, err = GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 3})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "manifest.csv") || !strings.Contains(err.Error(), "use --force") {
		t.Fatalf("second run without force: err = %v, want ErrExists naming manifest.csv with a --force hint", err)
	}
	if after, _ := os.ReadFile(first.RootCertPath); !bytes.Equal(before, after) {
		t.Errorf("refused run changed %s", first.RootCertPath)
	}

	second, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 3, Force: true})
	if err != nil {
		t.Fatalf("second run with force: %v", err)
	}
	if second.Root.Cert.Equal(first.Root.Cert) {
		t.Errorf("forced run kept the old root")
	}
	// Every device now chains to the new CA.
	leaf := readCerts(t, filepath.Join(dir, "devices", "dev-00002.pem"))[0]
	if err := leaf.CheckSignatureFrom(second.GroupCA.Cert); err != nil {
		t.Errorf("dev-00002 is not signed by the new intermediate: %v", err)
	}
}

func TestGenerateFleetRefusesExistingDevice(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "devices"), 0o755); err != nil {
		t.Fatal(err)
	}
	existing := writeTestFile(t, filepath.Join(dir, "devices"), "dev-00002.key", []byte("keep"))
	_, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 3})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), existing) {
		t.Fatalf("err = %v, want ErrExists naming %s", err, existing)
	}
	// Refused before anything was written.
	if got, want := listDir(t, dir), "devices"; got != want {
		t.Errorf("files = %q, want %q", got, want)
	}
	if got, want := listDir(t, filepath.Join(dir, "devices")), "dev-00002.key"; got != want {
		t.Errorf("devices = %q, want %q", got, want)
	}
}

func TestGenerateFleetBadOptions(t *testing.T) {
	tests := []struct {
		name    string
		opts    FleetOptions
		wantErr string
	}{
		{"zero count", FleetOptions{Count: 0}, "count 0 must be positive"},
		{"negative count", FleetOptions{Count: -3}, "count -3 must be positive"},
		{"no dir", FleetOptions{Count: 1}, "output directory is empty"},
		{"bad chain", FleetOptions{Count: 1, Chain: "leaf"}, `unknown chain "leaf"`},
		{"bad key type", FleetOptions{Count: 1, KeyType: "rsa1024"}, `unknown key type "rsa1024"`},
		{"upper-case prefix", FleetOptions{Count: 1, Prefix: "Dev-"}, `prefix "Dev-"`},
		{"prefix too long", FleetOptions{Count: 1, Prefix: strings.Repeat("a", 60) + "-"}, "limited to 64"},
		{"negative validity", FleetOptions{Count: 1, Validity: -1}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if tt.name != "no dir" {
				tt.opts.Dir = dir
			}
			_, err := GenerateFleet(context.Background(), tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
			if got := listDir(t, dir); got != "" {
				t.Errorf("files = %q, want none", got)
			}
		})
	}
}

func TestGenerateFleetCancel(t *testing.T) {
	dir := t.TempDir()
	if _, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 2}); err != nil {
		t.Fatal(err)
	}
	// A forced run that is stopped midway must not leave the old manifest
	// pointing at a mix of old and new devices.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := GenerateFleet(ctx, FleetOptions{Dir: dir, Count: 500, Force: true, Workers: 2, Progress: func(done int) {
		if done == 5 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if !strings.Contains(err.Error(), "of 500 devices") {
		t.Errorf("err = %q, want it to say how far it got", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "manifest.csv")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("manifest.csv after a stopped run: stat err = %v, want it absent", err)
	}
	entries, err := os.ReadDir(filepath.Join(dir, "devices"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
	if n := len(entries); n >= 2*500 {
		t.Errorf("%d device files after cancelling at 5, want far fewer than 1000", n)
	}
}

func TestFleetIDWidth(t *testing.T) {
	tests := []struct {
		count     int
		wantFirst string
		wantLast  string
	}{
		{1, "dev-00001", "dev-00001"},
		{99999, "dev-00001", "dev-99999"},
		{100000, "dev-000001", "dev-100000"},
		{1234567, "dev-0000001", "dev-1234567"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.count), func(t *testing.T) {
			p, err := planFleet(FleetOptions{Dir: "x", Count: tt.count})
			if err != nil {
				t.Fatal(err)
			}
			if got := p.id(0); got != tt.wantFirst {
				t.Errorf("first id = %q, want %q", got, tt.wantFirst)
			}
			if got := p.id(tt.count - 1); got != tt.wantLast {
				t.Errorf("last id = %q, want %q", got, tt.wantLast)
			}
		})
	}
}

// TestGenerateSymmetricFleets: a group fleet is a 0600 group key file and a
// manifest of ids; an individual fleet is a 0600 manifest of ids and keys;
// keys are random, 32 bytes, and the same as the Fleet's.
func TestGenerateSymmetricFleets(t *testing.T) {
	t.Run("group", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "sensors")
		fl, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 3, Prefix: "sensor-", Attestation: AttestationSymmetricGroup})
		if err != nil {
			t.Fatal(err)
		}
		if fl.Attestation != AttestationSymmetricGroup || fl.Root != nil || fl.GroupCA != nil || fl.DeviceKeys != nil || fl.RootCertPath != "" {
			t.Errorf("fleet = %+v, want a symmetric group fleet without CAs", fl)
		}
		if got, want := fl.GroupKeyPath, filepath.Join(dir, "group.key"); got != want {
			t.Errorf("GroupKeyPath = %q, want %q", got, want)
		}
		checkMode(t, fl.GroupKeyPath, 0o600)
		data, err := os.ReadFile(fl.GroupKeyPath)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(string(data), "\n") || strings.Count(string(data), "\n") != 1 {
			t.Errorf("group.key = %d bytes, want base64 on one line", len(data))
		}
		key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data)))
		if err != nil || len(key) != SymmetricKeySize || !bytes.Equal(key, fl.GroupKey) {
			t.Errorf("group.key holds %d bytes (%v), want the fleet's %d-byte key", len(key), err, SymmetricKeySize)
		}
		rows := readManifest(t, fl.ManifestPath)
		want := "registration_id\nsensor-00001\nsensor-00002\nsensor-00003\n"
		if got := joinRows(rows); got != want {
			t.Errorf("manifest:\n%s\nwant:\n%s", got, want)
		}
		if _, err := os.Stat(filepath.Join(dir, "ca")); err == nil {
			t.Errorf("a symmetric fleet has a ca folder")
		}

		// Again: refused without --force, before anything changes.
		_, err = GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 3, Attestation: AttestationSymmetricGroup})
		if !errors.Is(err, ErrExists) {
			t.Errorf("second fleet: %v, want ErrExists", err)
		}
		if again, _ := os.ReadFile(fl.GroupKeyPath); !bytes.Equal(again, data) {
			t.Errorf("a refused fleet changed group.key")
		}
		fl2, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 3, Attestation: AttestationSymmetricGroup, Force: true})
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(fl2.GroupKey, fl.GroupKey) {
			t.Errorf("--force kept the old group key")
		}
		checkMode(t, fl2.GroupKeyPath, 0o600)
	})
	t.Run("individual", func(t *testing.T) {
		dir := t.TempDir()
		fl, err := GenerateFleet(context.Background(), FleetOptions{Dir: dir, Count: 4, Attestation: AttestationSymmetricIndividual})
		if err != nil {
			t.Fatal(err)
		}
		if fl.GroupKeyPath != "" || fl.GroupKey != nil || len(fl.DeviceKeys) != 4 {
			t.Fatalf("fleet: group key path %q, %d device keys; want none and 4", fl.GroupKeyPath, len(fl.DeviceKeys))
		}
		checkMode(t, fl.ManifestPath, 0o600)
		rows := readManifest(t, fl.ManifestPath)
		if len(rows) != 5 || strings.Join(rows[0], ",") != "registration_id,symmetric_key" {
			t.Fatalf("manifest rows = %q", rows)
		}
		seen := map[string]bool{}
		for i, row := range rows[1:] {
			key, err := base64.StdEncoding.DecodeString(row[1])
			if row[0] != fl.RegistrationIDs[i] || err != nil || !bytes.Equal(key, fl.DeviceKeys[i]) || len(key) != SymmetricKeySize {
				t.Errorf("row %d: %s with a %d-byte key (%v), want %s with the fleet's key", i, row[0], len(key), err, fl.RegistrationIDs[i])
			}
			if seen[row[1]] {
				t.Errorf("row %d repeats a key", i)
			}
			seen[row[1]] = true
		}
	})
	t.Run("unknown", func(t *testing.T) {
		_, err := GenerateFleet(context.Background(), FleetOptions{Dir: t.TempDir(), Count: 1, Attestation: "tpm"})
		if err == nil || !strings.Contains(err.Error(), `unknown attestation "tpm"`) {
			t.Errorf("err = %v, want unknown attestation", err)
		}
	})
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s mode = %04o, want %04o", path, got, want)
	}
}

func joinRows(rows [][]string) string {
	var b strings.Builder
	for _, r := range rows {
		b.WriteString(strings.Join(r, ",") + "\n")
	}
	return b.String()
}
