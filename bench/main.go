// Command bench is the benchmark harness behind "make bench" (issue 7). On
// this machine, against in-process DPS simulators listening on 127.0.0.1
// only, it measures:
//
//  1. throughput: "dps-batch provision" against the seed article's curl
//     workflow (a bash loop running the real curl binary) and against a bare
//     Go loop (fresh mTLS handshake + PUT + GET per device, no ledger, no
//     pacing), with the ratios;
//  2. cost: CPU-seconds per 1,000 devices of the dps-batch process, its
//     peak RSS on a 1,000,000-row manifest, and ledger bytes per device;
//  3. quota accuracy against a simulator quota, with --rate at and above it;
//  4. resume cost on a fully assigned 100,000-device ledger;
//  5. a summary of the go test microbenchmarks of the hot paths;
//  6. a raised rate (issue 12): --rate alone against a simulator allowing
//     it, devices/s and the dry run's estimate against the measured time;
//  7. the HTML run report of a 1,000,000-device ledger (issue 14): wall
//     time and peak RSS of "dps-batch report --format html".
//
// Every figure is printed with its target and PASS/FAIL. The run is recorded
// in bench/results.json under its label (-label; "before" and "latest" by
// convention), and bench/RESULTS.md is generated from that file. Numbers are
// never edited by hand.
//
// Usage:
//
//	go run ./bench -bin bin/dps-batch              # what "make bench" runs
//	go run ./bench -bin bin/dps-batch -only quota  # one section; not recorded
//	go run ./bench -profile cpu.out                # profile the runner in-process
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// sections in the order they run.
var sections = []string{"throughput", "cost", "quota", "resume", "micro", "rate", "html"}

// config is the harness's flags.
type config struct {
	args    []string // as given, for the record
	bin     string   // dps-batch binary under test
	goCmd   string   // go command, for the microbenchmarks
	work    string   // scratch folder; "" = a new temporary one
	keep    bool     // keep the scratch folder
	label   string   // name of this run in the history
	commit  string   // what was measured; "" = git describe
	out     string   // RESULTS.md to generate
	history string   // results.json to update
	record  bool     // write history and RESULTS.md
	only    map[string]bool
	strict  bool // exit 1 when a target is missed

	devices       int // throughput fleet (X.509)
	curlDevices   int // subset for the curl workflow
	workers       int // --workers of dps-batch and goroutines of the bare loop
	rounds        int // turns each throughput client takes
	manifestRows  int // rows of the synthetic manifest for peak RSS
	rssDispatch   int // devices provisioned from it before stopping
	resumeDevices int // devices of the fully assigned ledger
	quotaPerMin   int // simulator quota Q
	quotaDevices  int // devices per quota scenario
	rateDevices   int // devices of the raised-rate run
	ratePerMin    int // its --rate and simulator quota
	htmlDevices   int // devices of the ledger the HTML report is made of
	microTime     string

	renderOnly  bool   // regenerate the results file from the history and exit
	profile     string // write a CPU profile of an in-process runner here, then exit
	profileCase string // which workload to profile
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if cfg.renderOnly {
		if err := render(cfg.history, cfg.out, cfg.label); err != nil {
			fmt.Fprintf(stderr, "bench: %v\n", err)
			return 1
		}
		return 0
	}
	if cfg.profile != "" {
		if err := profileRunner(ctx, cfg, stdout); err != nil {
			fmt.Fprintf(stderr, "bench: %v\n", err)
			return 1
		}
		return 0
	}
	if err := bench(ctx, cfg, stdout); err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		var miss *missedError
		if errors.As(err, &miss) {
			return 3
		}
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (*config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &config{args: args}
	only := ""
	fs.StringVar(&c.bin, "bin", "bin/dps-batch", "dps-batch `binary` to measure (make bench builds it first)")
	fs.StringVar(&c.goCmd, "go", "go", "go `command` used for the microbenchmarks")
	fs.StringVar(&c.work, "work", "", "scratch `folder` (default: a new temporary folder, removed at the end)")
	fs.BoolVar(&c.keep, "keep", false, "keep the scratch folder")
	fs.StringVar(&c.label, "label", "latest", "`name` of this run in bench/results.json (\"before\" marks the baseline)")
	fs.StringVar(&c.commit, "commit", "", "`description` of the code measured (default: git describe --always --dirty)")
	fs.StringVar(&c.out, "out", "bench/RESULTS.md", "results `file` to generate")
	fs.StringVar(&c.history, "history", "bench/results.json", "run history `file` RESULTS.md is generated from")
	fs.StringVar(&only, "only", "", "comma-separated `sections` to run ("+strings.Join(sections, ",")+"); a partial run is not recorded")
	fs.BoolVar(&c.strict, "strict", false, "exit 3 when any target is missed")
	fs.IntVar(&c.devices, "devices", 5000, "X.509 devices provisioned by dps-batch and the bare loop (`N`)")
	fs.IntVar(&c.curlDevices, "curl-devices", 200, "devices of the curl workflow (`N`, a subset)")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds of the throughput comparison; the best of each client counts (`N`)")
	fs.IntVar(&c.workers, "workers", 100, "--workers of dps-batch, goroutines of the bare loop (`N`)")
	fs.IntVar(&c.manifestRows, "manifest-rows", 1_000_000, "rows of the synthetic manifest measured for peak RSS (`N`)")
	fs.IntVar(&c.rssDispatch, "rss-devices", 100_000, "devices provisioned from the synthetic manifest before stopping it (`N`)")
	fs.IntVar(&c.resumeDevices, "resume-devices", 100_000, "devices of the fully assigned ledger re-run for the resume cost (`N`)")
	fs.IntVar(&c.quotaPerMin, "quota", 6000, "simulator registration quota Q (`per minute`)")
	fs.IntVar(&c.quotaDevices, "quota-devices", 2500, "devices per quota scenario (`N`)")
	fs.IntVar(&c.rateDevices, "rate-devices", 3000, "devices of the raised-rate run (`N`)")
	fs.IntVar(&c.ratePerMin, "rate", 6000, "--rate of the raised-rate run and its simulator's quota (`per minute`)")
	fs.IntVar(&c.htmlDevices, "html-devices", 1_000_000, "devices of the synthetic ledger whose HTML report is measured (`N`)")
	fs.StringVar(&c.microTime, "benchtime", "300ms", "-benchtime of the fast microbenchmarks (`duration`)")
	fs.BoolVar(&c.renderOnly, "render", false, "only regenerate -out from -history, showing the run labelled -label in full")
	fs.StringVar(&c.profile, "profile", "", "run a workload in-process with a CPU profile written to `file`, then exit")
	fs.StringVar(&c.profileCase, "profile-case", "throughput", "workload of -profile: throughput (section 1) or resume (section 4's re-run)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	c.only = map[string]bool{}
	if only != "" {
		for _, s := range strings.Split(only, ",") {
			s = strings.TrimSpace(s)
			known := false
			for _, k := range sections {
				known = known || k == s
			}
			if !known {
				fmt.Fprintf(stderr, "bench: unknown section %q (want %s)\n", s, strings.Join(sections, ", "))
				return nil, errors.New("usage")
			}
			c.only[s] = true
		}
	} else {
		c.record = true
	}
	return c, nil
}

// wants reports whether a section runs.
func (c *config) wants(section string) bool {
	return len(c.only) == 0 || c.only[section]
}

// missedError reports targets that were not met (with -strict).
type missedError struct{ n int }

func (e *missedError) Error() string { return fmt.Sprintf("%d target(s) missed", e.n) }

// bench runs the sections and records the results.
func bench(ctx context.Context, cfg *config, out io.Writer) error {
	start := time.Now()
	bin, err := filepath.Abs(cfg.bin)
	if err != nil {
		return err
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("dps-batch binary %s: %w (run make build, or pass -bin)", cfg.bin, err)
	}
	cfg.bin = bin
	if _, err := exec.LookPath("curl"); err != nil && cfg.wants("throughput") {
		return errors.New("the curl workflow needs the curl binary on PATH")
	}
	if cfg.work == "" {
		dir, err := os.MkdirTemp("", "dps-batch-bench-")
		if err != nil {
			return err
		}
		cfg.work = dir
		if !cfg.keep {
			defer os.RemoveAll(dir)
		}
	}
	r := newRecorder(out, cfg)
	load0 := loadAverage()
	fmt.Fprintf(out, "dps-batch benchmark (%s)\n  machine: %s\n  load:    %s (1-minute average; other work slows every figure)\n  binary:  %s\n  scratch: %s\n",
		r.run.Date, r.run.Machine, load0, cfg.bin, cfg.work)

	steps := []struct {
		name string
		fn   func(context.Context, *config, *recorder) error
	}{
		{"throughput", benchThroughput},
		{"cost", benchCost},
		{"quota", benchQuota},
		{"resume", benchResume},
		{"micro", benchMicro},
		{"rate", benchRate},
		{"html", benchHTML},
	}
	for _, s := range steps {
		if !cfg.wants(s.name) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.fn(ctx, cfg, r); err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
	}
	r.run.DurationSeconds = time.Since(start).Seconds()
	if l0, l1 := load0, loadAverage(); l0 != "" {
		r.run.Load = l0 + " at the start, " + l1 + " at the end"
	}
	missed := r.summary()
	if cfg.record {
		if err := r.save(cfg.history, cfg.out); err != nil {
			return err
		}
		fmt.Fprintf(out, "\nRecorded as %q in %s; %s regenerated.\n", cfg.label, cfg.history, cfg.out)
	}
	if cfg.strict && missed > 0 {
		return &missedError{n: missed}
	}
	return nil
}
