package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// microSet is one go test -bench invocation.
type microSet struct {
	pkg, pattern string
	benchtime    string // "" = the -benchtime flag
	what         string
}

// microSets are the microbenchmarks of the hot paths, with allocations.
var microSets = []microSet{
	{"./manifests", "^(BenchmarkValidateSymmetric1M|BenchmarkValidateX509_10k)$", "1x", "manifest parsing and validation"},
	{"./dps", "^(BenchmarkSASToken|BenchmarkDeriveDeviceKey|BenchmarkDecodeOperation|BenchmarkRegisterPoll)$", "", "SAS signing, response decoding, one register + poll"},
	{"./ledger", "^(BenchmarkPutParallel|BenchmarkBriefs)$", "", "ledger group-commit writes, batched lookups"},
	{"./batch", "^BenchmarkPacer", "", "pacing overhead"},
	{"./dpssim", "^BenchmarkHandlerRegisterPoll$", "", "the simulator's own cost"},
}

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.+)$`)

// benchMicro runs the microbenchmarks and summarises them.
func benchMicro(ctx context.Context, cfg *config, r *recorder) error {
	r.begin("micro", "5. Microbenchmarks (go test -bench, -benchmem)")
	for _, s := range microSets {
		bt := s.benchtime
		if bt == "" {
			bt = cfg.microTime
		}
		t0 := time.Now()
		cmd := exec.CommandContext(ctx, cfg.goCmd, "test", "-run", "^$", "-bench", s.pattern, "-benchmem", "-benchtime", bt, "-count", "1", s.pkg)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return fmt.Errorf("go test -bench %s %s: %w\n%s%s", s.pattern, s.pkg, err, tail(string(out), 2000), tail(stderr.String(), 2000))
		}
		ms := parseBench(strings.TrimPrefix(s.pkg, "./"), out)
		if len(ms) == 0 {
			return fmt.Errorf("go test -bench %s %s: no benchmark ran\n%s", s.pattern, s.pkg, tail(string(out), 2000))
		}
		r.logf("%s (%s, %s):", s.pkg, s.what, time.Since(t0).Round(100*time.Millisecond))
		for _, m := range ms {
			r.logf("  %-44s %s", m.Name, microMetrics(m))
		}
		r.run.Micro = append(r.run.Micro, ms...)
	}
	return nil
}

// parseBench reads go test -bench output.
func parseBench(pkg string, out []byte) []Micro {
	var ms []Micro
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		fields := strings.Fields(m[3])
		mi := Micro{Package: pkg, Name: m[1], Metrics: map[string]float64{}}
		for i := 0; i+1 < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				break
			}
			mi.Metrics[fields[i+1]] = v
			mi.Units = append(mi.Units, fields[i+1])
		}
		ms = append(ms, mi)
	}
	return ms
}
