package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpssim"
)

// curlScript is the seed article's workflow as a user scripts it: for each
// device, one curl PUT to register with the device's certificate, then curl
// GETs of the operation until it is no longer assigning. Sequential, like
// the article; the JSON is read with sed so that nothing beyond bash, sed
// and curl is needed.
const curlScript = `#!/usr/bin/env bash
# usage: register.sh ENDPOINT ID_SCOPE SERVER_CA IDS_FILE   (run in the fleet folder)
set -u
endpoint=$1 scope=$2 cacert=$3 ids=$4
while read -r id; do
  out=$(curl -s -X PUT --cacert "$cacert" \
    --cert "devices/$id.pem" --key "devices/$id.key" \
    -H 'Content-Type: application/json' -H 'Content-Encoding:  utf-8' \
    -d "{\"registrationId\": \"$id\"}" \
    "$endpoint/$scope/registrations/$id/register?api-version=2019-03-31")
  op=$(printf '%s' "$out" | sed -n 's/.*"operationId" *: *"\([^"]*\)".*/\1/p')
  status=$(printf '%s' "$out" | sed -n 's/^{[^{]*"status" *: *"\([^"]*\)".*/\1/p')
  while [ -n "$op" ] && [ "$status" = assigning ]; do
    out=$(curl -s --cacert "$cacert" \
      --cert "devices/$id.pem" --key "devices/$id.key" \
      -H 'Content-Type: application/json' -H 'Content-Encoding:  utf-8' \
      "$endpoint/$scope/registrations/$id/operations/$op?api-version=2019-03-31")
    status=$(printf '%s' "$out" | sed -n 's/^{[^{]*"status" *: *"\([^"]*\)".*/\1/p')
  done
  echo "$id ${status:-error}"
done < "$ids"
`

// benchThroughput compares dps-batch, the curl workflow and the bare loop on
// the same X.509 fleet, each against a fresh simulator with the same knobs.
func benchThroughput(ctx context.Context, cfg *config, r *recorder) error {
	r.begin("throughput", fmt.Sprintf("1. Throughput: %d X.509 devices, simulator without quota, Retry-After 0, no assignment delay", cfg.devices))
	dir := filepath.Join(cfg.work, "throughput")
	t0 := time.Now()
	fleet, err := certs.GenerateFleet(ctx, certs.FleetOptions{Dir: filepath.Join(dir, "fleet"), Count: cfg.devices})
	if err != nil {
		return err
	}
	r.logf("fleet of %d devices generated in %s", cfg.devices, time.Since(t0).Round(time.Millisecond))
	simCfg := dpssim.FleetConfig(scope, certs.CertPEM(fleet.GroupCA.Cert))
	fastKnobs(&simCfg)
	n := min(cfg.curlDevices, cfg.devices)

	// The three clients take turns, rounds times, each against a fresh
	// simulator; the best round of each is compared, because other work on
	// a shared machine only ever slows a round down.
	// CPU time, unlike wall time, hardly depends on what else the machine
	// does: the harness's own CPU while dps-batch runs is the simulator's,
	// and while the bare loop runs it is the simulator's plus the loop's.
	var batchRates, curlRates, bareRates, tunedRates []float64
	var cpu, batchSysCPU, bareSysCPU []time.Duration
	devs, err := loadBareDevices(fleet)
	if err != nil {
		return err
	}
	ledgerPath := ""
	for round := 1; round <= cfg.rounds; round++ {
		ledgerPath = filepath.Join(dir, fmt.Sprintf("round%d.ledger", round))
		self := selfCPU()
		c, err := provisionRound(ctx, cfg, dir, simCfg, fleet, ledgerPath)
		if err != nil {
			return err
		}
		batchRates = append(batchRates, float64(cfg.devices)/c.Wall.Seconds())
		cpu = append(cpu, c.CPU)
		batchSysCPU = append(batchSysCPU, c.CPU+selfCPU()-self)

		rate, sysCPU, err := bareRound(ctx, dir, simCfg, devs, cfg.workers, false)
		if err != nil {
			return err
		}
		bareRates, bareSysCPU = append(bareRates, rate), append(bareSysCPU, sysCPU)
		if rate, _, err = bareRound(ctx, dir, simCfg, devs, cfg.workers, true); err != nil {
			return err
		}
		tunedRates = append(tunedRates, rate)

		sim, err := startSim(dir, "sim", simCfg)
		if err != nil {
			return err
		}
		curlWall, curlAssigned, err := runCurlWorkflow(ctx, dir, fleet, sim, n)
		sim.Close()
		if err != nil {
			return err
		}
		if curlAssigned != n {
			return fmt.Errorf("curl workflow: %d of %d devices assigned", curlAssigned, n)
		}
		curlRates = append(curlRates, float64(n)/curlWall.Seconds())
		r.logf("round %d: dps-batch %.0f devices/s (%d devices in %s), bare loop %.0f devices/s (with dps-batch's TLS settings %.0f), curl workflow %.1f devices/s (%d devices in %s)",
			round, batchRates[round-1], cfg.devices, c.Wall.Round(time.Millisecond), bareRates[round-1], tunedRates[round-1], curlRates[round-1], n, curlWall.Round(time.Millisecond))
	}
	batchRate, curlRate, bareRate := slices.Max(batchRates), slices.Max(curlRates), slices.Max(bareRates)
	best := fmt.Sprintf("best of %d rounds", cfg.rounds)
	r.info("dps-batch provision", batchRate, "devices/s", fmt.Sprintf("%d devices, %d workers, whole command, %s", cfg.devices, cfg.workers, best))
	r.info("curl workflow (bash + curl)", curlRate, "devices/s", fmt.Sprintf("%d devices, sequential, %s", n, best))
	r.info("bare Go loop (handshake + PUT + GET)", bareRate, "devices/s", fmt.Sprintf("%d devices, %d goroutines, %s", cfg.devices, cfg.workers, best))
	r.atLeast("dps-batch / curl workflow", batchRate/curlRate, "×", 100, "")
	r.atLeast("dps-batch / bare loop", 100*batchRate/bareRate, "%", 70, "")
	tunedRate := slices.Max(tunedRates)
	r.info("bare Go loop with dps-batch's TLS settings", tunedRate, "devices/s",
		fmt.Sprintf("TLS 1.2 only, server chain verified once; %d goroutines, %s", cfg.workers, best))
	r.info("dps-batch / bare loop with dps-batch's TLS settings", 100*batchRate/tunedRate, "%",
		"what the runner itself (ledger, validation, pacing) costs, the handshake being the same")
	r.info("bare loop with dps-batch's TLS settings / curl workflow", tunedRate/curlRate, "×",
		"the fastest client measured here, which keeps no ledger, against the curl workflow")
	// What any client could reach here: the handshake's public-key
	// operations alone bound the rate, whoever runs them.
	if perDevice, err := handshakeCrypto(1000, 3); err != nil {
		return err
	} else if perDevice > 0 {
		procs := runtime.GOMAXPROCS(0)
		ceiling := float64(procs) / perDevice.Seconds()
		r.info("mTLS handshake crypto per device (client + server, one core)", float64(perDevice.Microseconds())/1000, "ms",
			"X25519 key and secret on each side, 2 ECDSA P-256 signatures, 3 verifications; best of 3")
		r.info("ceiling: every core doing handshake crypto only", ceiling, "devices/s",
			fmt.Sprintf("%d processors / crypto per device; no client or server work counted", procs))
		r.info("ceiling / curl workflow", ceiling/curlRate, "×",
			"what a client and server with no other work than this crypto could show against the curl workflow here")
	}
	if batchCPU, bareCPU := median(batchSysCPU), median(bareSysCPU); batchCPU > 0 && bareCPU > 0 {
		perDevice := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(cfg.devices) }
		r.info("CPU per device: dps-batch + simulator", perDevice(batchCPU), "ms", fmt.Sprintf("median of %d rounds", cfg.rounds))
		r.info("CPU per device: bare loop + simulator", perDevice(bareCPU), "ms", fmt.Sprintf("median of %d rounds", cfg.rounds))
		r.info("dps-batch / bare loop by CPU cost", 100*float64(bareCPU)/float64(batchCPU), "%",
			"the devices/s ratio a CPU-bound machine would show, whatever else runs on it")
	}

	r.section = "cost"
	med := median(cpu)
	r.info("CPU per 1,000 X.509 devices (dps-batch process)", med.Seconds()/float64(cfg.devices)*1000, "CPU-s",
		fmt.Sprintf("median of %d rounds: user+sys %.2f s for %d devices", cfg.rounds, med.Seconds(), cfg.devices))
	r.info("ledger per X.509 device", float64(fileSize(ledgerPath))/float64(cfg.devices), "bytes", "")
	return nil
}

// median returns the middle value of ds (the upper one of an even count).
func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// provisionRound runs dps-batch provision on the fleet against a fresh
// simulator, at full speed, into a new ledger.
func provisionRound(ctx context.Context, cfg *config, dir string, simCfg dpssim.Config, fleet *certs.Fleet, ledgerPath string) (*child, error) {
	sim, err := startSim(dir, "sim", simCfg)
	if err != nil {
		return nil, err
	}
	c, err := runChild(ctx, cfg.bin, provisionArgs(sim, fleet.ManifestPath, ledgerPath,
		"--rate", "-1", "--poll-rate", "-1", "--workers", fmt.Sprint(cfg.workers)), nil)
	sim.Close()
	if err != nil {
		return nil, err
	}
	sum, err := parseSummary(c)
	if err != nil {
		return nil, err
	}
	if got := sum.Outcomes["assigned"]; got != cfg.devices || c.Exit != 0 {
		return nil, fmt.Errorf("dps-batch provision: exit %d, %d of %d devices assigned\nstderr: %s", c.Exit, got, cfg.devices, tail(c.Stderr, 2000))
	}
	return c, nil
}

// bareRound runs the bare loop (tuned: with dps-batch's TLS settings)
// against a fresh simulator and returns its devices/s and the CPU time of
// this process meanwhile (the loop's and the simulator's).
func bareRound(ctx context.Context, dir string, simCfg dpssim.Config, devs []bareDevice, workers int, tuned bool) (float64, time.Duration, error) {
	sim, err := startSim(dir, "sim", simCfg)
	if err != nil {
		return 0, 0, err
	}
	defer sim.Close()
	self := selfCPU()
	wall, assigned, err := runBareLoop(ctx, devs, sim, workers, tuned)
	cpu := selfCPU() - self
	if err != nil {
		return 0, 0, err
	}
	if assigned != len(devs) {
		return 0, 0, fmt.Errorf("bare loop (tuned %v): %d of %d devices assigned", tuned, assigned, len(devs))
	}
	return float64(len(devs)) / wall.Seconds(), cpu, nil
}

// runCurlWorkflow runs the curl script over the first n devices of the fleet.
func runCurlWorkflow(ctx context.Context, dir string, fleet *certs.Fleet, sim *simulator, n int) (time.Duration, int, error) {
	script := filepath.Join(dir, "register.sh")
	if err := os.WriteFile(script, []byte(curlScript), 0o755); err != nil {
		return 0, 0, err
	}
	ids := filepath.Join(dir, "curl-ids.txt")
	if err := os.WriteFile(ids, []byte(strings.Join(fleet.RegistrationIDs[:n], "\n")+"\n"), 0o644); err != nil {
		return 0, 0, err
	}
	cmd := exec.CommandContext(ctx, "bash", script, sim.URL, scope, sim.CAFile, ids)
	cmd.Dir = fleet.Dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	wall := time.Since(start)
	if err != nil {
		return 0, 0, fmt.Errorf("curl workflow: %w\n%s", err, tail(stderr.String(), 2000))
	}
	assigned := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if strings.HasSuffix(sc.Text(), " assigned") {
			assigned++
		}
	}
	return wall, assigned, nil
}

// bareDevice is a device with its TLS identity loaded ahead of time.
type bareDevice struct {
	id   string
	cert tls.Certificate
}

// loadBareDevices loads every device's certificate, key and the fleet's
// intermediate, outside the timed part.
func loadBareDevices(fleet *certs.Fleet) ([]bareDevice, error) {
	var chain [][]byte
	if fleet.IntermediateCertPath != "" {
		b, err := os.ReadFile(fleet.IntermediateCertPath)
		if err != nil {
			return nil, err
		}
		for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
			chain = append(chain, blk.Bytes)
		}
	}
	devs := make([]bareDevice, len(fleet.RegistrationIDs))
	for i, id := range fleet.RegistrationIDs {
		c, err := tls.LoadX509KeyPair(filepath.Join(fleet.Dir, "devices", id+".pem"), filepath.Join(fleet.Dir, "devices", id+".key"))
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", id, err)
		}
		c.Certificate = append(c.Certificate, chain...)
		devs[i] = bareDevice{id: id, cert: c}
	}
	return devs, nil
}

// runBareLoop registers every device with the least work possible: per
// device a new transport (so a full mTLS handshake), one PUT, GETs until
// assigned, close. No ledger, no pacing, no retries.
//
// tuned gives the loop the TLS settings dps-batch uses for X.509 devices:
// TLS 1.2 only, and the server's chain verified in full once (later
// handshakes compare it with the verified one).
func runBareLoop(ctx context.Context, devs []bareDevice, sim *simulator, workers int, tuned bool) (time.Duration, int, error) {
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(sim.run.CAPEM)
	var tune func(*tls.Config)
	if tuned {
		once := &onceVerified{roots: roots, host: sim.host()}
		tune = func(c *tls.Config) {
			c.MaxVersion = tls.VersionTLS12
			c.InsecureSkipVerify = true // replaced by VerifyPeerCertificate
			c.VerifyPeerCertificate = once.verify
		}
	}
	var next, assigned atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	for range workers {
		g.Go(func() error {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(devs) {
					return nil
				}
				ok, err := bareRegister(gctx, sim.URL, roots, &devs[i], tune)
				if err != nil {
					return err
				}
				if ok {
					assigned.Add(1)
				}
			}
		})
	}
	err := g.Wait()
	return time.Since(start), int(assigned.Load()), err
}

var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func bareRegister(ctx context.Context, base string, roots *x509.CertPool, d *bareDevice, tune func(*tls.Config)) (bool, error) {
	cert := &d.cert
	conf := &tls.Config{
		RootCAs:              roots,
		MinVersion:           tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
	}
	if tune != nil {
		tune(conf)
	}
	tr := &http.Transport{TLSClientConfig: conf}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	path := base + "/" + scope + "/registrations/" + d.id
	do := func(method, url string, body []byte) (*dps.RegistrationOperationStatus, error) {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(ctx, method, url, rd)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("bare loop device %s: %w", d.id, err)
		}
		buf := bodyPool.Get().(*bytes.Buffer)
		defer bodyPool.Put(buf)
		buf.Reset()
		_, err = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("bare loop device %s: %w", d.id, err)
		}
		if resp.StatusCode/100 != 2 {
			return nil, fmt.Errorf("bare loop device %s: %s %s: HTTP %d %s", d.id, method, url, resp.StatusCode, buf.Bytes())
		}
		var st dps.RegistrationOperationStatus
		if err := json.Unmarshal(buf.Bytes(), &st); err != nil {
			return nil, fmt.Errorf("bare loop device %s: %w", d.id, err)
		}
		return &st, nil
	}
	st, err := do(http.MethodPut, path+"/register?api-version="+dps.DefaultAPIVersion, []byte(`{"registrationId":"`+d.id+`"}`))
	if err != nil {
		return false, err
	}
	op := st.OperationID
	for st.Status == dps.StatusAssigning {
		if st, err = do(http.MethodGet, path+"/operations/"+op+"?api-version="+dps.DefaultAPIVersion, nil); err != nil {
			return false, err
		}
	}
	return st.Status == dps.StatusAssigned, nil
}

// onceVerified verifies a server chain in full the first time and then
// accepts exactly that chain again: a stand-in for the dps client's
// remembering verifier (which also expires what it remembers), with the
// same cost per handshake, a comparison of bytes.
type onceVerified struct {
	roots *x509.CertPool
	host  string

	mu    sync.Mutex
	chain [][]byte
}

func (o *onceVerified) verify(raw [][]byte, _ [][]*x509.Certificate) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(raw) == 0 {
		return fmt.Errorf("server sent no certificate")
	}
	if slices.EqualFunc(o.chain, raw, bytes.Equal) {
		return nil
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return err
	}
	inter := x509.NewCertPool()
	for _, r := range raw[1:] {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return err
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: o.roots, Intermediates: inter, DNSName: o.host}); err != nil {
		return err
	}
	o.chain = make([][]byte, len(raw))
	for i, r := range raw {
		o.chain[i] = bytes.Clone(r)
	}
	return nil
}
