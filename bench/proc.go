package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/dpssim"
)

// scope is the ID scope every benchmark simulator serves.
const scope = dpssim.DefaultIDScope

// child is what one dps-batch process did and cost.
type child struct {
	Wall   time.Duration
	CPU    time.Duration // user + system time of the process
	MaxRSS int64         // peak resident set, bytes (sampled every 20 ms on Linux)
	Exit   int
	Stdout string
	Stderr string
}

// runChild runs the dps-batch binary with args. watch, if set, runs while
// the process lives (to signal it); its context ends when the process exits.
func runChild(ctx context.Context, bin string, args []string, watch func(ctx context.Context, p *os.Process)) (*child, error) {
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	peak := watchPeakRSS(cmd.Process.Pid, exited)
	wctx, cancel := context.WithCancel(ctx)
	watched := make(chan struct{})
	if watch != nil {
		go func() {
			defer close(watched)
			watch(wctx, cmd.Process)
		}()
	} else {
		close(watched)
	}
	err := cmd.Wait()
	wall := time.Since(start)
	close(exited)
	cancel()
	<-watched
	c := &child{Wall: wall, Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		c.Exit = ee.ExitCode()
	default:
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	if ps := cmd.ProcessState; ps != nil {
		c.CPU = ps.UserTime() + ps.SystemTime()
		c.MaxRSS = maxRSS(ps)
	}
	if peak != nil {
		// Sampled from the process itself; see watchPeakRSS.
		c.MaxRSS = peak()
	}
	return c, nil
}

// summary is the part of "provision --json" the harness reads.
type summary struct {
	Outcomes   map[string]int `json:"outcomes"`
	Registers  int            `json:"registers"`
	Polls      int            `json:"polls"`
	Lookups    int            `json:"lookups"`
	Retries    int            `json:"retries"`
	Throttled  int            `json:"throttled"`
	ElapsedSec float64        `json:"elapsedSeconds"`
	PerSecond  float64        `json:"devicesPerSecond"`
	BoundBy    string         `json:"boundBy"`
}

// parseSummary reads the JSON summary a provision run printed.
func parseSummary(c *child) (*summary, error) {
	var s summary
	if err := json.Unmarshal([]byte(c.Stdout), &s); err != nil {
		return nil, fmt.Errorf("provision exited %d without a JSON summary: %v\nstderr: %s", c.Exit, err, tail(c.Stderr, 2000))
	}
	return &s, nil
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// simulator is one in-process simulator serving HTTPS on 127.0.0.1.
type simulator struct {
	*dpssim.Server
	run    *dpssim.Running
	URL    string
	CAFile string
}

// startSim serves cfg on a free loopback port and writes its CA to dir.
func startSim(dir, name string, cfg dpssim.Config) (*simulator, error) {
	cfg.IDScope = scope
	srv, err := dpssim.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("simulator %s: %w", name, err)
	}
	run, err := dpssim.Start(srv, dpssim.StartOptions{Addr: "127.0.0.1:0"})
	if err != nil {
		return nil, fmt.Errorf("simulator %s: %w", name, err)
	}
	caFile := filepath.Join(dir, name+"-ca.pem")
	if err := os.WriteFile(caFile, run.CAPEM, 0o644); err != nil {
		run.Close()
		return nil, err
	}
	return &simulator{Server: srv, run: run, URL: run.URL, CAFile: caFile}, nil
}

// Close stops the simulator.
func (s *simulator) Close() { s.run.Close() }

// fastKnobs are the throughput settings: no quota, no Retry-After, no
// assignment delay.
func fastKnobs(cfg *dpssim.Config) {
	zero := 0
	cfg.RetryAfterSeconds = &zero
	cfg.AssignmentDelay = 0
	cfg.Quotas = dpssim.Quotas{RegistrationsPerMinute: -1, PollsPer10sPerDevice: -1}
}

// groupConfig is a simulator with one symmetric-key enrollment group; the
// base64 group key is written to keyFile (mode 0600) for --group-key-file
// and the raw key returned for in-process requests.
// groupFleet writes, in a new folder dir, a group key and a manifest of n
// symmetric-key group devices named prefix0000001..., and returns the
// simulator configuration for them (fast knobs), the manifest and the key
// file.
func groupFleet(dir, prefix string, n int) (simCfg dpssim.Config, manifest, keyFile string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return simCfg, "", "", err
	}
	keyFile = filepath.Join(dir, "group.key")
	if simCfg, _, err = groupConfig(keyFile); err != nil {
		return simCfg, "", "", err
	}
	fastKnobs(&simCfg)
	manifest = filepath.Join(dir, "manifest.csv")
	return simCfg, manifest, keyFile, writeGroupManifest(manifest, prefix, n)
}

func groupConfig(keyFile string) (dpssim.Config, []byte, error) {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	b64 := base64.StdEncoding.EncodeToString(key)
	if err := os.WriteFile(keyFile, []byte(b64+"\n"), 0o600); err != nil {
		return dpssim.Config{}, nil, err
	}
	return dpssim.Config{Groups: []dpssim.EnrollmentGroup{{
		EnrollmentGroupID: "bench-sensors",
		Attestation:       dpssim.Attestation{SymmetricKey: &dpssim.SymmetricKeyAttestation{PrimaryKey: b64}},
	}}}, key, nil
}

// writeGroupManifest writes a manifest of n group devices (registration id
// only: their keys derive from the group key), ids prefix + zero-padded index.
func writeGroupManifest(path, prefix string, n int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	var b strings.Builder
	b.Grow(1 << 20)
	b.WriteString("registration_id\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "%s%07d\n", prefix, i)
		if b.Len() > 1<<20-64 {
			if _, err := f.WriteString(b.String()); err != nil {
				f.Close()
				return fmt.Errorf("write %s: %w", path, err)
			}
			b.Reset()
		}
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

// provisionArgs are the flags of a provision run against sim.
func provisionArgs(sim *simulator, manifest, ledgerPath string, extra ...string) []string {
	return append([]string{"provision",
		"--manifest", manifest, "--ledger", ledgerPath, "--id-scope", scope,
		"--endpoint", sim.URL, "--ca-file", sim.CAFile, "--quiet", "--json"}, extra...)
}

// fileSize is the size of a ledger: its file plus any WAL left behind.
func fileSize(path string) int64 {
	var n int64
	for _, p := range []string{path, path + "-wal"} {
		if fi, err := os.Stat(p); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// host is the simulator's host name (no port), as a client verifies it.
func (s *simulator) host() string {
	u, err := url.Parse(s.URL)
	if err != nil {
		return ""
	}
	return u.Hostname()
}
