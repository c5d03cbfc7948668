package main

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/ledger"
)

// newDPSClient builds the DPS client from the flags; the --ca-file bundle is
// added to the system roots.
func newDPSClient(p *provisionFlags) (*dps.Client, error) {
	cfg := dps.Config{
		Endpoint:   p.endpoint,
		IDScope:    p.idScope,
		APIVersion: p.apiVersion,
		Timeout:    p.requestTimeout,
		UserAgent:  "dps-batch/" + version,
	}
	if p.x509TLS == "1.3" {
		cfg.X509MaxTLSVersion = tls.VersionTLS13
	}
	if p.caFile != "" {
		pool, err := dps.SystemPoolWithCAFile(p.caFile)
		if err != nil {
			return nil, usagef("--ca-file must be a PEM file of CA certificates (dps-batch sim writes one with --ca-out)", "%v", err)
		}
		cfg.RootCAs = pool
	}
	c, err := dps.NewClient(cfg)
	if err != nil {
		return nil, usagef("--endpoint https://global.azure-devices-provisioning.net", "%v", err)
	}
	return c, nil
}

// isTerminal reports whether w is an interactive terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progress is the live progress display on stderr: a bar on a terminal, a
// plain line every 5 s otherwise (CI logs). Log lines go through Writer so
// that they print above the bar instead of through it.
type progress struct {
	w    io.Writer
	mu   sync.Mutex
	bar  *progressbar.ProgressBar
	done chan struct{}
	wg   sync.WaitGroup
}

// Write prints log output, clearing the bar first; the next tick redraws it.
func (p *progress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bar != nil {
		_ = p.bar.Clear()
	}
	return p.w.Write(b)
}

// newProgress prepares the display on w; Start begins it.
func newProgress(w io.Writer, quiet bool) *progress {
	p := &progress{w: w}
	if !quiet && isTerminal(w) {
		p.bar = progressbar.NewOptions(-1,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription("provisioning"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(16),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	if !quiet {
		p.done = make(chan struct{})
	}
	return p
}

// Start shows st until Stop.
func (p *progress) Start(st *batch.Stats) {
	if p.done == nil {
		return
	}
	interval := 5 * time.Second
	if p.bar != nil {
		interval = 200 * time.Millisecond
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				if p.bar != nil {
					p.mu.Lock()
					_ = p.bar.Finish()
					p.mu.Unlock()
				}
				return
			case <-t.C:
				s := st.Snapshot()
				if s.Total == 0 && s.Done() == 0 {
					continue
				}
				p.mu.Lock()
				if p.bar != nil {
					p.bar.ChangeMax(s.Total)
					p.bar.Describe(progressLine(s))
					_ = p.bar.Set(s.Done())
				} else {
					fmt.Fprintf(p.w, "progress: %d/%d %s\n", s.Done(), s.Total, progressLine(s))
				}
				p.mu.Unlock()
			}
		}
	}()
}

// Stop ends the display; safe to call once after Start (or without it).
func (p *progress) Stop() {
	if p.done == nil {
		return
	}
	close(p.done)
	p.wg.Wait()
	p.done = nil
}

// progressLine is the live status, short enough for an 80-column terminal
// next to the bar: counts that are zero are left out.
func progressLine(s batch.Snapshot) string {
	parts := []string{fmt.Sprintf("%d assigned", s.Outcomes[batch.OutcomeAssigned])}
	for _, c := range []struct {
		n    int
		name string
	}{
		{s.Outcomes[batch.OutcomeFailed], "failed"},
		{s.Outcomes[batch.OutcomeIssuedLost], "cert lost"},
		{s.Outcomes[batch.OutcomeDisabled], "disabled"},
		{s.Outcomes[batch.OutcomeUnfinished], "left"},
		{s.InFlight, "in flight"},
		{s.Throttled, "429s"},
	} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.name))
		}
	}
	parts = append(parts, fmt.Sprintf("%.1f/s", s.Rate()))
	switch d := s.ETA(); {
	case s.Stopping:
		parts = append(parts, "stopping")
	case d > 0:
		parts = append(parts, "eta "+d.Round(time.Second).String())
	}
	return strings.Join(parts, ", ")
}

// summaryJSON is the --json form of the summary.
type summaryJSON struct {
	Ledger     string         `json:"ledger"`
	Manifest   string         `json:"manifest"`
	Devices    int            `json:"devices"`
	Outcomes   map[string]int `json:"outcomes"`
	ByHub      map[string]int `json:"byHub"`
	Registers  int            `json:"registers"`
	Requests   int            `json:"registerRequests"`
	Unanswered int            `json:"registersUnanswered"`
	Conflicts  int            `json:"registerConflicts"`
	Campaign   *campaignJSON  `json:"campaign,omitempty"`
	Left       int            `json:"left"`
	States     map[string]int `json:"ledgerStates"`
	BoundBy    string         `json:"boundBy,omitempty"`
	Error      string         `json:"error,omitempty"`
	Polls      int            `json:"polls"`
	Lookups    int            `json:"lookups"`
	Retries    int            `json:"retries"`
	Throttled  int            `json:"throttled"`
	ElapsedSec float64        `json:"elapsedSeconds"`
	PerSecond  float64        `json:"devicesPerSecond"`
	P50Sec     float64        `json:"p50Seconds"`
	P95Sec     float64        `json:"p95Seconds"`
	Resumable  bool           `json:"resumable"`
	ResumeCmd  string         `json:"resumeCommand,omitempty"`
	ReportCmd  string         `json:"reportCommand"`
	PrevFailed int            `json:"skippedFailures"`
	RunID      int64          `json:"runId"`
	// CertsWritten and CertsLost are set with --issue-certs: issued
	// certificate chains written durably, and devices whose issued
	// certificate was lost (issued-lost).
	CertsWritten *int `json:"certificatesWritten,omitempty"`
	CertsLost    *int `json:"certificatesLost,omitempty"`
}

// printSummary prints what the run did and what to run next.
func printSummary(w io.Writer, p *provisionFlags, res *batch.Result, asJSON bool) {
	s := res.Snapshot
	resume := resumeCommand(p)
	report := fmt.Sprintf("dps-batch report --ledger %s --out %s", shellQuote(p.ledgerPath), shellQuote(reportPath(p.ledgerPath)))
	if asJSON {
		out := summaryJSON{
			Ledger: p.ledgerPath, Manifest: p.manifest, Devices: res.Plan.Devices,
			Outcomes: map[string]int{}, ByHub: res.ByHub,
			Registers: s.Registers, Requests: s.RegisterRequests, Unanswered: s.Unanswered, Conflicts: s.Conflicts,
			Campaign: newCampaignJSON(res), Left: res.Left(), States: map[string]int{}, BoundBy: res.Bound, Polls: s.Polls, Lookups: s.Lookups, Retries: s.Retries, Throttled: s.Throttled,
			ElapsedSec: s.Elapsed.Seconds(), PerSecond: s.Rate(), P50Sec: res.P50.Seconds(), P95Sec: res.P95.Seconds(),
			Resumable: res.Resumable(), ReportCmd: report, PrevFailed: s.SkippedFailures, RunID: res.RunID,
		}
		for o := batch.OutcomeAssigned; o <= batch.OutcomeIssuedLost; o++ {
			out.Outcomes[o.String()] = s.Outcomes[o]
		}
		if p.issueCerts {
			out.CertsWritten, out.CertsLost = &s.CertsWritten, &s.CertsLost
		}
		for st, n := range res.Counts {
			out.States[string(st)] = n
		}
		if res.Resumable() {
			out.ResumeCmd = resume
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
		return
	}
	fmt.Fprintf(w, "\n%d devices in the manifest; this run worked on %d in %s (%.1f devices/s)",
		res.Plan.Devices, s.Done(), s.Elapsed.Round(time.Millisecond), s.Rate())
	if res.Bound != "" {
		fmt.Fprintf(w, ", limited by %s", res.Bound)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  this run: assigned %d  disabled %d  failed %d  skipped %d",
		s.Outcomes[batch.OutcomeAssigned], s.Outcomes[batch.OutcomeDisabled], s.Outcomes[batch.OutcomeFailed],
		s.Outcomes[batch.OutcomeSkipped])
	if n := s.Outcomes[batch.OutcomeChanged]; n > 0 {
		fmt.Fprintf(w, "  credentials-changed %d", n)
	}
	if n := s.Outcomes[batch.OutcomeIssuedLost]; n > 0 {
		fmt.Fprintf(w, "  issued-lost %d", n)
	}
	fmt.Fprintln(w)
	if p.issueCerts {
		fmt.Fprintf(w, "  issued certificates written: %d", s.CertsWritten)
		if s.CertsLost > 0 {
			fmt.Fprintf(w, "; lost: %d (DPS hands a certificate over once: %s registers those devices again, billable)", s.CertsLost, batch.ReissueFlags(res.ReissueNeedsNewCampaign))
		}
		fmt.Fprintln(w)
	}
	printLeft(w, res)
	if s.SkippedWithoutCert > 0 {
		fmt.Fprintf(w, "  %d device(s) were assigned earlier without an issued certificate and were skipped (--reprovision registers them again with their CSR, billable)\n", s.SkippedWithoutCert)
	}
	if s.SkippedIssuedLost > 0 {
		fmt.Fprintf(w, "  %d device(s) are issued-lost from an earlier run and were skipped (%s registers them again, billable, for a new certificate)\n",
			s.SkippedIssuedLost, batch.ReissueFlags(res.ReissueNeedsNewCampaign))
	}
	if s.SkippedFailures > 0 {
		fmt.Fprintf(w, "  %d device(s) failed or were disabled in an earlier run and were skipped (--retry-failed registers them again)\n", s.SkippedFailures)
	}
	if len(res.ByHub) > 0 {
		hubs := make([]string, 0, len(res.ByHub))
		for h := range res.ByHub {
			hubs = append(hubs, h)
		}
		slices.Sort(hubs)
		fmt.Fprintf(w, "  by hub:")
		for _, h := range hubs {
			fmt.Fprintf(w, " %s=%d", h, res.ByHub[h])
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "  registrations accepted by DPS (billable): %d", s.Registers)
	if s.Unanswered > 0 {
		fmt.Fprintf(w, "; %d more unanswered (looked up, never sent again blindly)", s.Unanswered)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  requests: %d register, %d poll, %d lookup; %d retries; %d throttled (429)",
		s.RegisterRequests, s.Polls, s.Lookups, s.Retries, s.Throttled)
	if s.Conflicts > 0 {
		fmt.Fprintf(w, "; %d register answered 409203 (an operation was running: followed, not repeated)", s.Conflicts)
	}
	fmt.Fprintln(w)
	if c := res.Campaign; c != nil {
		switch {
		case res.CampaignAlreadyCompleted:
			fmt.Fprintf(w, "  campaign #%d (%s) was completed on %s: no device was registered again; add --new-campaign to start another (billable)\n",
				c.ID, c.Kind, c.FinishedAt.Local().Format(time.DateTime))
		case res.CampaignCompleted:
			fmt.Fprintf(w, "  campaign #%d (%s) completed: every device of it reached a final state\n", c.ID, c.Kind)
		case p.reprovision || p.retryFailed:
			fmt.Fprintf(w, "  campaign #%d (%s) is unfinished: the same command continues it without registering any device twice\n", c.ID, c.Kind)
		default:
			fmt.Fprintf(w, "  note: campaign #%d (%s) is unfinished: run with %s to continue it\n", c.ID, c.Kind, campaignFlags(c.Kind))
		}
	}
	if s.Done() > s.Outcomes[batch.OutcomeUnfinished] {
		fmt.Fprintf(w, "  time per device (first request to final answer): p50 %s, p95 %s\n", res.P50.Round(time.Millisecond), res.P95.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "Ledger: %s\n", p.ledgerPath)
	if res.Resumable() {
		fmt.Fprintf(w, "Work is left. Resume with the same command:\n  %s\n", resume)
	}
	fmt.Fprintf(w, "Report: %s\n", report)
}

// resumeCommand is the command that continues this run: the same
// arguments, minus --dry-run.
func resumeCommand(p *provisionFlags) string {
	if p.resumeHint != "" {
		return p.resumeHint
	}
	parts := []string{"dps-batch", "provision"}
	for _, a := range p.args {
		switch strings.TrimLeft(a, "-") {
		case "dry-run":
			continue
		case "new-campaign", "new-campaign=true":
			// The campaign this run started is the one to continue: starting
			// yet another would register its devices again.
			continue
		}
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

// printLeft says what the next run has to do, in the ledger's state names
// (the words status and report use).
func printLeft(w io.Writer, res *batch.Result) {
	left := res.Left()
	if left == 0 {
		return
	}
	var parts []string
	for _, st := range []ledger.State{ledger.StatePending, ledger.StateRegistering, ledger.StateAssigning, ledger.StateRetryable} {
		if n := res.Counts[st]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", st, n))
		}
	}
	fmt.Fprintf(w, "  left for the next run: %d (%s)\n", left, strings.Join(parts, ", "))
}

// stoppedOnError reports a run that stopped on an error: the error and what
// to fix first, then what the ledger holds and what to run next. There is
// no speed to report, and "the same command" is offered only when it can
// succeed.
func stoppedOnError(e *env, p *provisionFlags, res *batch.Result, err error) error {
	var se *batch.SystemicError
	systemic := errors.As(err, &se)
	if systemic {
		fmt.Fprintf(e.stderr, "dps-batch provision: %v\nhint: %s\n", se, se.Hint)
	} else {
		fmt.Fprintf(e.stderr, "dps-batch provision: %v\n", err)
	}
	s := res.Snapshot
	w := e.stdout
	if p.jsonOut {
		out := map[string]any{"ledger": p.ledgerPath, "manifest": p.manifest, "error": err.Error(), "left": res.Left(),
			"registers": s.Registers, "registerRequests": s.RegisterRequests, "registersUnanswered": s.Unanswered, "runId": res.RunID}
		states := map[string]int{}
		for st, n := range res.Counts {
			states[string(st)] = n
		}
		out["ledgerStates"] = states
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	} else {
		fmt.Fprintf(w, "\nStopped on an error; %d devices in the manifest.\n", res.Plan.Devices)
		fmt.Fprintf(w, "  this run: assigned %d  disabled %d  failed %d",
			s.Outcomes[batch.OutcomeAssigned], s.Outcomes[batch.OutcomeDisabled], s.Outcomes[batch.OutcomeFailed])
		if n := s.Outcomes[batch.OutcomeIssuedLost]; n > 0 {
			fmt.Fprintf(w, "  issued-lost %d", n)
		}
		fmt.Fprintln(w)
		if p.issueCerts {
			fmt.Fprintf(w, "  issued certificates written: %d", s.CertsWritten)
			if s.CertsLost > 0 {
				fmt.Fprintf(w, "; lost: %d (%s registers those devices again, billable)", s.CertsLost, batch.ReissueFlags(res.ReissueNeedsNewCampaign))
			}
			fmt.Fprintln(w)
		}
		printLeft(w, res)
		fmt.Fprintf(w, "  registrations accepted by DPS (billable): %d", s.Registers)
		if s.Unanswered > 0 {
			fmt.Fprintf(w, "; %d more unanswered (the next run looks them up first)", s.Unanswered)
		}
		fmt.Fprintln(w)
		fmt.Fprintf(w, "Ledger: %s (consistent: nothing is lost)\n", p.ledgerPath)
		if systemic {
			if se.Refused && s.Registers == 0 && s.Unanswered == 0 {
				fmt.Fprintln(w, "Nothing billable was sent: every request was refused before DPS accepted it.")
			}
			fmt.Fprintf(w, "Fix the cause above, then run the same command again: the devices stopped this way are retryable.\n")
			if s.Registers == 0 && s.Unanswered == 0 {
				fmt.Fprintf(w, "If --endpoint or --id-scope was wrong, add --rebind to the corrected command (DPS accepted nothing recorded in this ledger).\n")
			}
		} else {
			fmt.Fprintf(w, "Fix the cause above, then run provision again with this ledger: devices in progress are looked up or polled, never registered twice.\n")
		}
	}
	if systemic {
		return &exitError{code: exitSystemic}
	}
	return &exitError{code: exitInternal}
}

// campaignJSON is a campaign in --json output.
type campaignJSON struct {
	ID        int64     `json:"id"`
	Kind      string    `json:"kind"`
	StartedAt time.Time `json:"startedAt"`
	Started   bool      `json:"startedByThisRun"`
	Completed bool      `json:"completed"`
}

func newCampaignJSON(res *batch.Result) *campaignJSON {
	c := res.Campaign
	if c == nil {
		return nil
	}
	return &campaignJSON{ID: c.ID, Kind: c.Kind, StartedAt: c.StartedAt, Started: res.CampaignStarted, Completed: res.CampaignCompleted}
}

// reportPath is where the summary suggests writing the report: next to the
// ledger, named after it.
func reportPath(ledgerPath string) string {
	return strings.TrimSuffix(ledgerPath, filepath.Ext(ledgerPath)) + "-report.csv"
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@%+,", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
