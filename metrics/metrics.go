// Package metrics exports a run's progress as Prometheus metrics: the
// counters batch.Stats and batch.EnrollStats keep, read at each scrape,
// and what a batch.Observer is told of each request and finished device
// (request counts by kind and HTTP status class, latency histograms).
//
// Every metric lives in the Exporter's own registry, not the process-wide
// default one, so two runs in one process (tests, demo) never collide.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dps-batch/dps-batch/batch"
)

const namespace = "dpsbatch"

// Exporter holds a run's metrics. It implements batch.Observer.
type Exporter struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	reqTime  *prometheus.HistogramVec
	devTime  prometheus.Histogram
}

var _ batch.Observer = (*Exporter)(nil)

// New makes an Exporter with its own registry and the metrics every run
// has: requests by kind and status class and their latency.
func New() *Exporter {
	e := &Exporter{reg: prometheus.NewRegistry()}
	e.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "requests_total",
		Help: "Requests to DPS by kind (register, poll, lookup; enroll: bulk, get, delete) and HTTP status class (2xx, 4xx, 5xx; none when no answer arrived).",
	}, []string{"kind", "code"})
	e.reqTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "request_duration_seconds",
		Help:    "Latency of one request to DPS by kind (sending to reading the whole answer), for requests that got an answer.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 12), // 10 ms to 20 s
	}, []string{"kind"})
	e.devTime = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: namespace, Name: "device_duration_seconds",
		Help:    "Time from a device's first request in this run to DPS's final answer (assigned, disabled or failed).",
		Buckets: prometheus.ExponentialBuckets(0.1, 2, 12), // 100 ms to 200 s
	})
	e.reg.MustRegister(e.requests, e.reqTime, e.devTime)
	return e
}

// Registry is the Exporter's registry.
func (e *Exporter) Registry() *prometheus.Registry { return e.reg }

// Request implements batch.Observer.
func (e *Exporter) Request(kind string, status int, latency time.Duration) {
	e.requests.WithLabelValues(kind, statusClass(status)).Inc()
	if status != 0 && latency > 0 {
		e.reqTime.WithLabelValues(kind).Observe(latency.Seconds())
	}
}

// Device implements batch.Observer.
func (e *Exporter) Device(_ batch.Outcome, latency time.Duration) {
	e.devTime.Observe(latency.Seconds())
}

func statusClass(status int) string {
	if status < 100 || status > 599 {
		return "none"
	}
	return fmt.Sprintf("%dxx", status/100)
}

// counter registers a counter read from f at each scrape.
func (e *Exporter) counter(name, help string, labels prometheus.Labels, f func() float64) {
	e.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: namespace, Name: name, Help: help, ConstLabels: labels}, f))
}

// gauge registers a gauge read from f at each scrape.
func (e *Exporter) gauge(name, help string, labels prometheus.Labels, f func() float64) {
	e.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: name, Help: help, ConstLabels: labels}, f))
}

// Provision exports the counters of a provisioning run. Call it once,
// before the run starts.
func (e *Exporter) Provision(st *batch.Stats) {
	for _, o := range []batch.Outcome{batch.OutcomeAssigned, batch.OutcomeDisabled, batch.OutcomeFailed,
		batch.OutcomeUnfinished, batch.OutcomeSkipped, batch.OutcomeChanged, batch.OutcomeIssuedLost} {
		e.counter("devices_total", "Devices this run finished with, by outcome.",
			prometheus.Labels{"outcome": o.String()}, func() float64 { return float64(st.Snapshot().Outcomes[o]) })
	}
	e.gauge("devices_planned", "Devices this run has to work on (skipped ones excluded).", nil,
		func() float64 { return float64(st.Snapshot().Total) })
	e.gauge("devices_in_flight", "Devices being worked on now.", nil,
		func() float64 { return float64(st.Snapshot().InFlight) })
	e.counter("registrations_billable_total", "Register requests DPS accepted: the billable registrations.", nil,
		func() float64 { return float64(st.Snapshot().Registers) })
	e.gauge("registrations_unanswered", "Register requests with no usable answer yet, which DPS may have accepted ; it falls as lookups settle them.", nil,
		func() float64 { return float64(st.Snapshot().Unanswered) })
	e.counter("throttled_total", "Answers that slowed the fleet down: 429, or 503 with Retry-After.", nil,
		func() float64 { return float64(st.Snapshot().Throttled) })
	e.counter("retries_total", "Requests sent again after a failed one.", nil,
		func() float64 { return float64(st.Snapshot().Retries) })
	e.counter("certificates_written_total", "Certificate chains DPS issued at registration (--issue-certs) written durably.", nil,
		func() float64 { return float64(st.Snapshot().CertsWritten) })
	e.counter("certificates_lost_total", "Devices assigned whose issued certificate was not kept (issued-lost).", nil,
		func() float64 { return float64(st.Snapshot().CertsLost) })
	e.gauge("pacer_rate_per_minute", "Current rate of a pacer in requests per minute (0: unlimited).",
		prometheus.Labels{"pacer": "register"}, func() float64 { return st.Rates().Register })
	e.gauge("pacer_rate_per_minute", "Current rate of a pacer in requests per minute (0: unlimited).",
		prometheus.Labels{"pacer": "poll"}, func() float64 { return st.Rates().Poll })
}

// Enroll exports the counters of an enrollment run. Call it once, before
// the run starts.
func (e *Exporter) Enroll(st *batch.EnrollStats) {
	for o := batch.EnOutCreated; o <= batch.EnOutSkipped; o++ {
		e.counter("enrollments_total", "Devices this enrollment run finished with, by outcome.",
			prometheus.Labels{"outcome": o.String()}, func() float64 { return float64(st.Snapshot().Outcomes[o]) })
	}
	e.gauge("devices_planned", "Devices this run has to work on (skipped ones excluded).", nil,
		func() float64 { return float64(st.Snapshot().Total) })
	e.counter("enrollment_items_total", "Enrollments carried by bulk requests.", nil,
		func() float64 { return float64(st.Snapshot().Items) })
	e.counter("throttled_total", "Answers that slowed the fleet down: 429, or 503 with Retry-After.", nil,
		func() float64 { return float64(st.Snapshot().Throttled) })
	e.counter("retries_total", "Requests sent again after a failed one.", nil,
		func() float64 { return float64(st.Snapshot().Retries) })
	e.gauge("pacer_rate_per_minute", "Current rate of a pacer in requests per minute (0: unlimited).",
		prometheus.Labels{"pacer": "service"}, st.Rate)
}

// Handler serves the registry in the Prometheus exposition format.
func (e *Exporter) Handler() http.Handler {
	return promhttp.HandlerFor(e.reg, promhttp.HandlerOpts{Registry: e.reg})
}

// Server serves /metrics on a listener until Close.
type Server struct {
	srv  *http.Server
	done chan struct{}
	Addr net.Addr // where it listens
}

// Serve serves /metrics on ln.
func (e *Exporter) Serve(ln net.Listener) *Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", e.Handler())
	s := &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, done: make(chan struct{}), Addr: ln.Addr()}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s
}

// Close stops serving, letting a scrape under way finish for up to a
// second.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = s.srv.Close()
	}
	<-s.done
	return err
}

// CheckListen refuses an address that is not loopback unless allowRemote:
// the endpoint has no authentication, and what it shows (device counts,
// failures, rates) is for the line, not the network. A host name must be
// localhost; an empty host (":9464") means every interface.
func CheckListen(addr string, allowRemote bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--metrics-listen %q: want host:port, e.g. 127.0.0.1:9464: %w", addr, err)
	}
	if allowRemote {
		return nil
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("--metrics-listen %s is not a loopback address: the metrics endpoint has no authentication; use 127.0.0.1:PORT, or add --metrics-allow-remote to serve it on the network", addr)
}
