package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/ledger"
)

func runStatus(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "status", `Show what a ledger holds: devices by state and by hub, the last run, and what
running the provision command again would do. The ledger is only read.
--runs N shows the run history instead: the last N runs, newest first.
Several --ledger values (or a quoted glob) show the stations together: devices
by state per station and in all, and the devices two ledgers record
differently (exit 3 unless --allow-conflicts).`,
		"dps-batch status --ledger devices.ledger",
		"dps-batch status --ledger devices.ledger --json",
		"dps-batch status --ledger devices.ledger --runs 10",
		"dps-batch status --ledger 'line-*.ledger'")
	lf := addLedgerFlags(fs)
	ledgerPath := &lf.first
	asJSON := fs.Bool("json", false, "print as JSON")
	runs := fs.Int("runs", 0, "show the last `N` runs instead (command, start, end, outcome, device counts)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireFlag(fs, "ledger", *ledgerPath, "dps-batch status --ledger devices.ledger"); err != nil {
		return err
	}
	if *runs < 0 {
		return usagef("dps-batch status --ledger devices.ledger --runs 10", "--runs must be a positive number of runs, not %d", *runs)
	}
	if err := lf.check("dps-batch status --ledger line-1.ledger --ledger line-2.ledger"); err != nil {
		return err
	}
	if lf.merged() {
		return statusMerged(ctx, e, lf, *asJSON, *runs)
	}
	led, err := openForReading(ctx, *ledgerPath, "dps-batch status --ledger devices.ledger")
	if err != nil {
		return err
	}
	defer led.Close()
	if *runs > 0 {
		return printRuns(ctx, e, led, *ledgerPath, *runs, *asJSON)
	}
	counts, err := led.Counts(ctx)
	if err != nil {
		return err
	}
	scope, endpoint, _, err := led.Binding(ctx)
	if err != nil {
		return err
	}
	run, hasRun, err := led.LastRun(ctx)
	if err != nil {
		return err
	}
	next, err := resumePlan(ctx, led)
	if err != nil {
		return err
	}
	campaign, hasCampaign, err := led.LastCampaign(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		out := struct {
			Ledger   string              `json:"ledger"`
			IDScope  string              `json:"idScope,omitempty"`
			Endpoint string              `json:"endpoint,omitempty"`
			Total    int                 `json:"devices"`
			ByState  map[string]int      `json:"byState"`
			ByHub    map[string]int      `json:"byHub"`
			Attempts int                 `json:"registerRequests"`
			Polls    int                 `json:"pollRequests"`
			LastRun  *runJSON            `json:"lastRun,omitempty"`
			Campaign *statusCampaignJSON `json:"campaign,omitempty"`
			Resume   map[string]int      `json:"resume"`
		}{Ledger: *ledgerPath, IDScope: scope, Endpoint: endpoint, Total: counts.Total, ByState: map[string]int{},
			ByHub: counts.ByHub, Attempts: counts.Attempts, Polls: counts.Polls, Resume: next}
		for s, n := range counts.ByState {
			out.ByState[string(s)] = n
		}
		if hasRun {
			out.LastRun = &runJSON{ID: run.ID, StartedAt: run.StartedAt, Command: run.Command, Outcome: run.Outcome, Options: run.Options}
			if !run.FinishedAt.IsZero() {
				out.LastRun.FinishedAt = &run.FinishedAt
			}
		}
		if hasCampaign {
			out.Campaign = &statusCampaignJSON{ID: campaign.ID, Kind: campaign.Kind, StartedAt: campaign.StartedAt, Open: campaign.Open(), Outcome: campaign.Outcome}
			if !campaign.FinishedAt.IsZero() {
				out.Campaign.FinishedAt = &campaign.FinishedAt
			}
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	w := e.stdout
	fmt.Fprintf(w, "Ledger %s: %d devices", *ledgerPath, counts.Total)
	if scope != "" {
		fmt.Fprintf(w, " (ID scope %s at %s)", scope, endpoint)
	}
	fmt.Fprintln(w)
	for _, s := range allStates {
		if n := counts.ByState[s]; n > 0 {
			fmt.Fprintf(w, "  %-12s %d\n", s, n)
		}
	}
	if ec, err := led.EnrollmentCounts(ctx); err == nil && ec.Total > 0 {
		fmt.Fprintln(w, "Individual enrollments (dps-batch enroll):")
		for _, s := range ledger.EnrollStates() {
			if n := ec.ByState[s]; n > 0 {
				fmt.Fprintf(w, "  %-16s %d\n", s, n)
			}
		}
		if n := ec.ByRegistration[ledger.RegDeleted] + ec.ByRegistration[ledger.RegNone]; n > 0 {
			fmt.Fprintf(w, "  registration states deleted (deregister): %d\n", n)
		}
	}
	printByHub(w, "Assigned by hub:", counts.ByHub)
	fmt.Fprintf(w, "Registrations DPS accepted or may have accepted (billable): %d; polls and lookups: %d\n", counts.Attempts, counts.Polls)
	if hasRun {
		end := "still running or killed"
		if !run.FinishedAt.IsZero() {
			end = "finished " + run.FinishedAt.Local().Format(time.DateTime) + ": " + run.Outcome
		}
		fmt.Fprintf(w, "Last run #%d: started %s, %s\n", run.ID, run.StartedAt.Local().Format(time.DateTime), end)
	}
	if hasRun {
		fmt.Fprintln(w, "Run history: add --runs 10 to list the last 10 runs")
	}
	if hasCampaign {
		if campaign.Open() {
			fmt.Fprintf(w, "Open campaign #%d (%s), started %s: unfinished; provision with %s continues it (no device is registered twice by it)\n",
				campaign.ID, campaign.Kind, campaign.StartedAt.Local().Format(time.DateTime), campaignFlags(campaign.Kind))
		} else {
			fmt.Fprintf(w, "Last campaign #%d (%s): %s %s\n", campaign.ID, campaign.Kind, campaign.Outcome, campaign.FinishedAt.Local().Format(time.DateTime))
		}
	}
	fmt.Fprintf(w, "Running provision again would: register %d, poll %d, check %d with a lookup first, skip %d (of which %d failed/disabled: --retry-failed registers them again)\n",
		next["register"], next["poll"], next["lookup"], next["skip"], next["skipFailed"])
	if n := counts.ByState[ledger.StateIssuedLost]; n > 0 {
		fmt.Fprintf(w, "%d device(s) issued-lost: DPS assigned them and issued a certificate, but the certificate never reached its file, and DPS hands it over only once.\n"+
			"  Remedy: run the same provision command with %s: it registers them again with their CSR (billable, one registration each) and writes the new certificate.\n",
			n, batch.ReissueFlags(batch.ReissueNeedsNewCampaign(ctx, led)))
	}
	return nil
}

// printByHub prints a title and the devices per hub, sorted by hub; nothing
// when there is no hub.
func printByHub(w io.Writer, title string, byHub map[string]int) {
	if len(byHub) == 0 {
		return
	}
	fmt.Fprintln(w, title)
	for _, h := range slices.Sorted(maps.Keys(byHub)) {
		fmt.Fprintf(w, "  %-40s %d\n", h, byHub[h])
	}
}

// runEntryJSON is a run in status --runs --json output.
type runEntryJSON struct {
	runJSON
	// Unfinished is true when the run recorded no end: it was killed (or
	// the machine stopped), or it is still running.
	Unfinished bool           `json:"unfinished,omitempty"`
	Counts     map[string]int `json:"counts,omitempty"`
}

// printRuns is status --runs: the last n runs, newest first.
func printRuns(ctx context.Context, e *env, led *ledger.Ledger, path string, n int, asJSON bool) error {
	runs, err := led.Runs(ctx, n)
	if err != nil {
		return err
	}
	if asJSON {
		out := struct {
			Ledger string         `json:"ledger"`
			Runs   []runEntryJSON `json:"runs"`
		}{Ledger: path, Runs: []runEntryJSON{}}
		for _, r := range runs {
			j := runEntryJSON{runJSON: runJSON{ID: r.ID, StartedAt: r.StartedAt, Command: r.Command, Outcome: r.Outcome, Options: r.Options}}
			if r.FinishedAt.IsZero() {
				j.Unfinished = true
			} else {
				j.FinishedAt = &r.FinishedAt
			}
			for s, c := range r.Counts {
				if j.Counts == nil {
					j.Counts = map[string]int{}
				}
				j.Counts[string(s)] = c
			}
			out.Runs = append(out.Runs, j)
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	w := e.stdout
	switch {
	case len(runs) == 0:
		fmt.Fprintf(w, "Ledger %s: no runs yet\n", path)
		return nil
	case len(runs) < n:
		fmt.Fprintf(w, "Ledger %s: all %d run(s), newest first\n", path, len(runs))
	default:
		fmt.Fprintf(w, "Ledger %s: the last %d run(s), newest first\n", path, len(runs))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  run\tcommand\tstarted\tfinished\toutcome\tdevices")
	for _, r := range runs {
		end, outcome := "killed / still running", "-"
		if !r.FinishedAt.IsZero() {
			end, outcome = r.FinishedAt.Local().Format(time.DateTime), r.Outcome
		}
		fmt.Fprintf(tw, "  #%d\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Command, r.StartedAt.Local().Format(time.DateTime), end, outcome, runCounts(r.Counts))
	}
	return tw.Flush()
}

// runCounts formats a run's device counts in lifecycle order, e.g.
// "assigned 40, failed 2"; "-" when none were recorded.
func runCounts(counts map[ledger.State]int) string {
	var parts []string
	for _, s := range allStates {
		if n := counts[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", s, n))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

// statusCampaignJSON is the last campaign in status --json output.
type statusCampaignJSON struct {
	ID         int64      `json:"id"`
	Kind       string     `json:"kind"`
	StartedAt  time.Time  `json:"startedAt"`
	FinishedAt *time.Time `json:"finishedAt,omitempty"`
	Open       bool       `json:"open"`
	Outcome    string     `json:"outcome,omitempty"`
}

// runJSON is a run in status --json output.
type runJSON struct {
	ID         int64             `json:"id"`
	StartedAt  time.Time         `json:"startedAt"`
	FinishedAt *time.Time        `json:"finishedAt,omitempty"`
	Command    string            `json:"command"`
	Outcome    string            `json:"outcome,omitempty"`
	Options    map[string]string `json:"options,omitempty"`
}

// resumePlan says what a re-run would do with the devices the ledger holds,
// deciding each exactly as the runner does (without the manifest, so a
// change of credentials is not seen here).
func resumePlan(ctx context.Context, led *ledger.Ledger) (map[string]int, error) {
	next := map[string]int{}
	err := led.Each(ctx, nil, func(d ledger.Device) error {
		a := batch.Decide(d, true, "", batch.Policy{})
		next[a.String()]++
		if a == batch.ActionSkip && (d.State == ledger.StateFailed || d.State == ledger.StateDisabled) {
			next["skipFailed"]++
		}
		return nil
	})
	return next, err
}

// openForReading opens an existing ledger read-only; a missing file is a
// usage error with a hint.
func openForReading(ctx context.Context, path, example string) (*ledger.Ledger, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, usagef(example, "ledger %s does not exist (provision creates it; check the --ledger path)", path)
	}
	return ledger.Open(ctx, path, ledger.Options{ReadOnly: true})
}
