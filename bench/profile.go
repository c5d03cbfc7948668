package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpssim"
	"github.com/dps-batch/dps-batch/ledger"
	"github.com/dps-batch/dps-batch/manifests"
)

// profileRunner runs one workload with the runner in this process, wired as
// "dps-batch provision" wires it, and writes a CPU profile:
//
//   - "throughput": section 1's X.509 fleet of -devices devices at full speed;
//   - "resume": section 4's -resume-devices symmetric-key devices, provisioned
//     once without profiling, then the profiled re-run.
//
// The simulator runs in the same process; the runner's samples carry the
// label side=runner, so "go tool pprof -tagfocus side=runner FILE" shows the
// runner alone.
func profileRunner(ctx context.Context, cfg *config, out io.Writer) error {
	dir := cfg.work
	if dir == "" {
		d, err := os.MkdirTemp("", "dps-batch-profile-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	var (
		simCfg   dpssim.Config
		manifest string
		opts     manifests.Options
		n        int
	)
	switch cfg.profileCase {
	case "throughput":
		fleet, err := certs.GenerateFleet(ctx, certs.FleetOptions{Dir: filepath.Join(dir, "fleet"), Count: cfg.devices})
		if err != nil {
			return err
		}
		simCfg = dpssim.FleetConfig(scope, certs.CertPEM(fleet.GroupCA.Cert))
		manifest, n = fleet.ManifestPath, cfg.devices
	case "resume":
		var err error
		simCfg, opts.GroupKey, err = groupConfig(filepath.Join(dir, "group.key"))
		if err != nil {
			return err
		}
		manifest, n = filepath.Join(dir, "manifest.csv"), cfg.resumeDevices
		if err := writeGroupManifest(manifest, "meter-", n); err != nil {
			return err
		}
	default:
		return fmt.Errorf("-profile-case %q: want throughput or resume", cfg.profileCase)
	}
	fastKnobs(&simCfg)
	sim, err := startSim(dir, "sim", simCfg)
	if err != nil {
		return err
	}
	defer sim.Close()
	ledgerPath := filepath.Join(dir, "p.ledger")
	if cfg.profileCase == "resume" {
		t0 := time.Now()
		if _, _, err := profiledRun(ctx, cfg, sim, manifest, opts, ledgerPath); err != nil {
			return err
		}
		fmt.Fprintf(out, "first run: %d devices in %s\n", n, time.Since(t0).Round(time.Millisecond))
	}

	f, err := os.Create(cfg.profile)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	start := time.Now()
	var (
		res *batch.Result
		ls  ledger.Stats
	)
	// Everything the runner starts (ledger writer, HTTP transports) inherits
	// the label; the simulator's goroutines were started before it.
	pprof.Do(ctx, pprof.Labels("side", "runner"), func(ctx context.Context) {
		res, ls, err = profiledRun(ctx, cfg, sim, manifest, opts, ledgerPath)
	})
	wall := time.Since(start)
	pprof.StopCPUProfile()
	if err != nil {
		return err
	}
	s := res.Snapshot
	fmt.Fprintf(out, "%d devices in %s (%.0f devices/s; dispatch %s, %.0f/s): assigned %d, skipped %d; ledger: %+v\n",
		n, wall.Round(time.Millisecond), float64(n)/wall.Seconds(), s.Elapsed.Round(time.Millisecond), s.Rate(),
		s.Outcomes[batch.OutcomeAssigned], s.Outcomes[batch.OutcomeSkipped], ls)
	fmt.Fprintf(out, "profile: %s (go tool pprof -tagfocus side=runner %s)\n", cfg.profile, cfg.profile)
	return f.Close()
}

// profiledRun wires a runner as "dps-batch provision" does and runs it.
func profiledRun(ctx context.Context, cfg *config, sim *simulator, manifest string, opts manifests.Options, ledgerPath string) (*batch.Result, ledger.Stats, error) {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(sim.run.CAPEM)
	client, err := dps.NewClient(dps.Config{Endpoint: sim.URL, IDScope: scope, RootCAs: roots})
	if err != nil {
		return nil, ledger.Stats{}, err
	}
	defer client.Close()
	led, err := ledger.Open(ctx, ledgerPath, ledger.Options{})
	if err != nil {
		return nil, ledger.Stats{}, err
	}
	defer led.Close()
	if err := led.Lock(); err != nil {
		return nil, ledger.Stats{}, err
	}
	if err := led.Bind(ctx, scope, sim.URL); err != nil {
		return nil, ledger.Stats{}, err
	}
	r := &batch.Runner{Client: client, Ledger: led, Stats: &batch.Stats{}, Options: batch.Options{
		ManifestPath: manifest, Manifest: opts,
		Workers: cfg.workers, RegisterRate: -1, PollRate: -1,
	}}
	res, err := r.Run(ctx, nil)
	return res, led.Stats(), err
}
