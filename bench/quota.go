package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpssim"
)

// benchQuota checks that dps-batch uses a registration quota fully without
// earning 429s: with --rate equal to the quota, and with --rate three times
// the quota (a user who does not know it).
func benchQuota(ctx context.Context, cfg *config, r *recorder) error {
	q := cfg.quotaPerMin
	r.begin("quota", fmt.Sprintf("3. Quota accuracy: simulator quota Q = %d registrations/min, Retry-After 1, %d devices per case", q, cfg.quotaDevices))
	r.note("Quota runs: the simulator's registration bucket holds one minute of quota and starts full; the harness empties it first (in-process register requests until the first 429) so that the run meets the steady-state limit, as on a DPS instance already in use. The achieved rate is taken from the simulator's registration times over the last 80%% of the devices (the first 20%% may spend quota that accumulated while dps-batch started).")
	cases := []struct {
		name string
		rate int
	}{
		{"rate = Q", q},
		{"rate = 3×Q", 3 * q},
	}
	for i, tc := range cases {
		if err := ctx.Err(); err != nil {
			return err
		}
		achieved, throttled, requests, err := quotaCase(ctx, cfg, fmt.Sprintf("case%d", i+1), tc.rate)
		if err != nil {
			return fmt.Errorf("%s: %w", tc.name, err)
		}
		pct := 100 * achieved / float64(q)
		r.logf("%s (--rate %d): %.0f registrations/min achieved, %d of %d register requests answered 429", tc.name, tc.rate, achieved, throttled, requests)
		if i == 0 {
			r.atLeast("quota: rate = Q, achieved / Q", pct, "%", 97, "")
			r.atMost("quota: rate = Q, 429 answers", float64(throttled), "429s", 0, fmt.Sprintf("of %d register requests", requests))
		} else {
			r.atLeast("quota: rate = 3×Q, achieved / Q", pct, "%", 90, "")
			r.below("quota: rate = 3×Q, requests answered 429", 100*float64(throttled)/float64(requests), "%", 1,
				fmt.Sprintf("%d of %d register requests", throttled, requests))
		}
	}
	return nil
}

// quotaCase provisions cfg.quotaDevices group devices at --rate rate against
// a fresh simulator with quota cfg.quotaPerMin. It returns the achieved rate
// (registrations per minute), the 429s and register requests of the run.
func quotaCase(ctx context.Context, cfg *config, name string, rate int) (achieved float64, throttled, requests int64, err error) {
	dir := filepath.Join(cfg.work, "quota", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, 0, 0, err
	}
	keyFile := filepath.Join(dir, "group.key")
	simCfg, groupKey, err := groupConfig(keyFile)
	if err != nil {
		return 0, 0, 0, err
	}
	one := 1
	simCfg.RetryAfterSeconds = &one
	simCfg.Quotas = dpssim.Quotas{RegistrationsPerMinute: cfg.quotaPerMin}
	manifest := filepath.Join(dir, "manifest.csv")
	const prefix = "quota-"
	if err := writeGroupManifest(manifest, prefix, cfg.quotaDevices); err != nil {
		return 0, 0, 0, err
	}
	sim, err := startSim(dir, "sim", simCfg)
	if err != nil {
		return 0, 0, 0, err
	}
	defer sim.Close()
	if err := drainQuota(sim, groupKey, 3*cfg.quotaPerMin); err != nil {
		return 0, 0, 0, err
	}
	before := sim.Stats()
	// Enough workers that concurrency never limits the rate: each device
	// spends the 1 s Retry-After between its PUT and its poll.
	workers := max(cfg.workers, 3*rate/60)
	c, err := runChild(ctx, cfg.bin, provisionArgs(sim, manifest, filepath.Join(dir, "q.ledger"),
		"--group-key-file", keyFile, "--rate", fmt.Sprint(rate), "--poll-rate", fmt.Sprint(3*cfg.quotaPerMin),
		"--workers", fmt.Sprint(workers)), nil)
	if err != nil {
		return 0, 0, 0, err
	}
	sum, err := parseSummary(c)
	if err != nil {
		return 0, 0, 0, err
	}
	if got := sum.Outcomes["assigned"]; got != cfg.quotaDevices {
		return 0, 0, 0, fmt.Errorf("exit %d, %d of %d devices assigned\nstderr: %s", c.Exit, got, cfg.quotaDevices, tail(c.Stderr, 2000))
	}
	after := sim.Stats()
	var times []time.Time
	for _, reg := range sim.Registrations() {
		if strings.HasPrefix(reg.RegistrationID, prefix) && !reg.CreatedUTC.IsZero() {
			times = append(times, reg.CreatedUTC)
		}
	}
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	first := len(times) / 5
	if len(times)-first < 2 {
		return 0, 0, 0, fmt.Errorf("only %d registrations recorded", len(times))
	}
	span := times[len(times)-1].Sub(times[first])
	achieved = float64(len(times)-1-first) / span.Minutes()
	return achieved, after.Throttled - before.Throttled, after.RegisterRequests - before.RegisterRequests, nil
}

// drainQuota empties the simulator's registration bucket with in-process
// register requests of throwaway group devices, until the first 429.
func drainQuota(sim *simulator, groupKey []byte, max int) error {
	expiry := time.Now().Add(time.Hour)
	for i := range max {
		id := fmt.Sprintf("drain-%06d", i)
		req := httptest.NewRequest(http.MethodPut, "/"+scope+"/registrations/"+id+"/register?api-version="+dps.DefaultAPIVersion,
			strings.NewReader(`{"registrationId":"`+id+`"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", dps.SASToken(dps.DeriveDeviceKeyBytes(groupKey, id), scope, id, expiry))
		w := httptest.NewRecorder()
		sim.ServeHTTP(w, req)
		switch w.Code {
		case http.StatusTooManyRequests:
			return nil
		case http.StatusAccepted, http.StatusOK:
		default:
			return fmt.Errorf("drain the quota: register %s: HTTP %d %s", id, w.Code, w.Body)
		}
	}
	return fmt.Errorf("drain the quota: no 429 after %d registrations", max)
}
