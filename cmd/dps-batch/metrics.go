package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"time"

	"github.com/dps-batch/dps-batch/metrics"
)

// metricsFlags are --metrics-listen and --metrics-allow-remote, on provision
// and enroll.
type metricsFlags struct {
	listen      string
	allowRemote bool
	linger      time.Duration
}

func (m *metricsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&m.listen, "metrics-listen", "", "serve Prometheus metrics of the run at http://`ADDR`/metrics while it runs, e.g. 127.0.0.1:9464 (README: Metrics); loopback only unless --metrics-allow-remote")
	fs.BoolVar(&m.allowRemote, "metrics-allow-remote", false, "allow --metrics-listen on an address other than loopback (the endpoint has no authentication)")
	fs.DurationVar(&m.linger, "metrics-linger", 0, "with --metrics-listen: keep serving this long after the run (`duration`, e.g. 30s: two scrape intervals), so the last scrape sees the final counts; Ctrl-C ends it")
}

// check validates the flags before anything starts.
func (m *metricsFlags) check() error {
	if m.linger < 0 {
		return usagef("--metrics-linger 30s", "--metrics-linger must not be negative, got %s", m.linger)
	}
	if m.listen == "" {
		if m.allowRemote || m.linger > 0 {
			return usagef("--metrics-listen 127.0.0.1:9464 --metrics-linger 30s", "--metrics-allow-remote and --metrics-linger need --metrics-listen")
		}
		return nil
	}
	if err := metrics.CheckListen(m.listen, m.allowRemote); err != nil {
		return usagef("--metrics-listen 127.0.0.1:9464 (or add --metrics-allow-remote)", "%v", err)
	}
	return nil
}

// metricsScraped, when set (tests), is called with the endpoint's address
// after the run ended and before the endpoint stops.
var metricsScraped func(addr string)

// serve starts the endpoint when --metrics-listen is given, with the
// metrics wire registers; the returned Exporter (nil without the flag) is
// the run's observer, and stop ends serving, after --metrics-linger unless
// ctx ends or a stop is asked for first.
func (m *metricsFlags) serve(ctx context.Context, e *env, wire func(*metrics.Exporter)) (exp *metrics.Exporter, stop func(), err error) {
	if m.listen == "" {
		return nil, func() {}, nil
	}
	ln, err := net.Listen("tcp", m.listen)
	if err != nil {
		return nil, nil, fmt.Errorf("--metrics-listen: %w", err)
	}
	exp = metrics.New()
	wire(exp)
	srv := exp.Serve(ln)
	fmt.Fprintf(e.stderr, "metrics: http://%s/metrics\n", srv.Addr)
	return exp, func() {
		if metricsScraped != nil {
			metricsScraped(srv.Addr.String())
		}
		if m.linger > 0 {
			fmt.Fprintf(e.stderr, "metrics: serving the final counts for %s more (Ctrl-C ends it)\n", m.linger)
			t := time.NewTimer(m.linger)
			select {
			case <-t.C:
			case <-ctx.Done():
			case <-e.drain:
			}
			t.Stop()
		}
		_ = srv.Close()
	}, nil
}
