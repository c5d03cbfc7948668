package report

import (
	"bytes"
	"context"
	"embed"
	"fmt"
	"html/template"
	"image/color"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/gonum/stat"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/text"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/dps-batch/dps-batch/ledger"
)

// HTML is the self-contained HTML run report (WriteHTML).
const HTML Format = "html"

//go:embed templates/report.html.tmpl
var htmlTemplates embed.FS

var htmlTmpl = template.Must(template.New("report.html.tmpl").Funcs(template.FuncMap{
	"num":  formatCount,
	"dur":  formatDuration,
	"time": formatTime,
	"pct":  func(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) + "%" },
	"secs": formatSeconds,
	"sub":  func(a, b int) int { return a - b },
	"f1":   func(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) },
}).ParseFS(htmlTemplates, "templates/report.html.tmpl"))

// HTMLOptions controls WriteHTML.
type HTMLOptions struct {
	// Title heads the page; "" = "dps-batch run report".
	Title string
	// Now is when the report is made; nil = time.Now.
	Now func() time.Time
	// AttentionLimit caps the table of devices that need attention (all
	// are counted); 0 = DefaultAttentionLimit.
	AttentionLimit int
	// Intervals is about how many intervals the throughput chart has;
	// 0 = 60.
	Intervals int
}

// DefaultAttentionLimit is how many devices the attention table lists at
// most.
const DefaultAttentionLimit = 1000

// failureIDs is how many registration ids a failure group lists.
const failureIDs = 5

// HTMLReport is what the HTML report shows, aggregated from the ledger (or
// the ledgers of several stations) while its devices stream past: nothing
// per device is kept except one latency per finished device and the capped
// attention and conflict tables.
type HTMLReport struct {
	Title       string
	Ledger      string // the ledger of a one-ledger report
	GeneratedAt time.Time

	// Stations are the ledgers of a merged report (WriteMergedHTML), in
	// the order given, with their totals; nil for one ledger.
	Stations []StationSummary
	// StateColumns are the states some device of the report is in, in
	// ledger order: the per-station table's columns.
	StateColumns []ledger.State
	// Merge is what a merged report held: rows, distinct devices, shared
	// devices and conflicts; nil for one ledger.
	Merge *MergeResult
	// Conflicts are the first devices the ledgers disagree about (up to
	// the attention cap), every ledger's row of each.
	Conflicts []Conflict

	Total       int // devices; in a merged report, rows (a device per ledger holding it)
	States      []StateCount
	Billable    int // register requests sent (DPS bills each)
	Polls       int
	Retries     int // register requests beyond each device's first
	Throttled   int // 429 answers in the attempt log
	First, Last time.Time
	Duration    time.Duration
	Assigned    int
	PerSecond   float64 // assigned devices per second of the span

	Step       time.Duration // throughput interval
	Throughput []int         // assigned devices per interval
	Throttles  []int         // 429 answers per interval
	PeakPerSec float64

	Latency     LatencySummary
	Hubs        []HubCount
	Failures    []FailureGroup
	Runs        []RunRow
	Attention   []AttentionRow
	NAttention  int
	AttentionAt int // the cap

	Charts []Chart
}

// StationSummary is one station's part of a merged HTML report.
type StationSummary struct {
	Station, Path string
	Devices       int // rows of this station
	ByState       map[ledger.State]int
	Assigned      int
	Billable      int
	Polls         int
	Retries       int
	Throttled     int
	First, Last   time.Time
	Duration      time.Duration
	PerSecond     float64 // assigned devices per second of the station's own span
	// Throughput is the station's assigned devices per interval of the
	// report's (shared) time axis.
	Throughput []int
}

// StateCount is a number of devices in one state.
type StateCount struct {
	State ledger.State
	N     int
	Pct   float64
}

// LatencySummary describes first request → final answer of finished devices.
type LatencySummary struct {
	N             int
	P50, P95, P99 float64 // seconds
	Max           float64
}

// HubCount is a number of devices assigned to one IoT hub.
type HubCount struct {
	Hub string
	N   int
	Pct float64
}

// FailureGroup is the devices that ended with one DPS error code.
type FailureGroup struct {
	Code    int // 0 = no DPS code (transport error, HTTP status only)
	Status  int // an HTTP status seen with it
	Message string
	Hint    string
	N       int
	IDs     []string // the first few, in registration id order
	// Stations are the stations of IDs, one each (merged reports only).
	Stations []string
}

// RunRow is one run of the run history.
type RunRow struct {
	ledger.Run
	Station  string // merged reports: the ledger's station
	Options  string
	Counts   string
	Duration time.Duration
}

// AttentionRow is a device that needs attention.
type AttentionRow struct {
	ledger.Device
	Station string // merged reports: the ledger the row is from
	Reason  string
}

// Chart is one inline SVG chart.
type Chart struct {
	ID, Title string
	SVG       template.HTML
}

// WriteHTML writes the HTML run report of l to w: one self-contained page
// (inline CSS and SVG, no script, nothing fetched) that opens offline and
// prints. The devices are streamed once and aggregated; it returns the
// number of devices.
func WriteHTML(ctx context.Context, l *ledger.Ledger, w io.Writer, opts HTMLOptions) (int, error) {
	r, err := BuildHTMLReport(ctx, l, opts)
	if err != nil {
		return 0, err
	}
	return r.Total, r.render(w)
}

// render executes the template into a buffer, then writes it to w: a
// template error never leaves half a page.
func (r *HTMLReport) render(w io.Writer) error {
	var buf bytes.Buffer
	if err := htmlTmpl.Execute(&buf, r); err != nil {
		return err
	}
	_, err := buf.WriteTo(w)
	return err
}

// MergedHTMLOptions control WriteMergedHTML.
type MergedHTMLOptions struct {
	HTMLOptions
	// AllowConflicts accepts devices the ledgers disagree about: the page
	// is the same (every row of each such device is in it), but no
	// *ConflictError is returned.
	AllowConflicts bool
}

// WriteMergedHTML writes one HTML run report of several ledgers (the
// stations of a factory, the shards of a manifest): the summary with a
// table of totals per station, the charts over all stations (the
// throughput chart with a line per station), the run history and the
// devices that need attention with a station column, and the devices two
// ledgers disagree about (Disagree), every ledger's row of each. The
// ledgers are streamed together (Sources.Each): memory does not grow with
// their size. The result has the totals of each station, as WriteMerged's;
// when ledgers disagree and conflicts are not allowed the report is still
// written in full and a *ConflictError returned.
func WriteMergedHTML(ctx context.Context, sources Sources, w io.Writer, opts MergedHTMLOptions) (*MergeResult, error) {
	r, err := BuildMergedHTMLReport(ctx, sources, opts.HTMLOptions)
	if err != nil {
		return nil, err
	}
	if err := r.render(w); err != nil {
		return r.Merge, err
	}
	if r.Merge.Conflicts > 0 && !opts.AllowConflicts {
		return r.Merge, &ConflictError{Result: r.Merge}
	}
	return r.Merge, nil
}

// BuildHTMLReport reads l into the HTMLReport WriteHTML renders.
func BuildHTMLReport(ctx context.Context, l *ledger.Ledger, opts HTMLOptions) (*HTMLReport, error) {
	return buildHTML(ctx, Sources{{Station: StationName(l.Path()), Path: l.Path(), Ledger: l}}, false, opts)
}

// BuildMergedHTMLReport reads the ledgers of sources into the HTMLReport
// WriteMergedHTML renders.
func BuildMergedHTMLReport(ctx context.Context, sources Sources, opts HTMLOptions) (*HTMLReport, error) {
	if len(sources) == 0 {
		return nil, fmt.Errorf("a merged report needs at least one ledger")
	}
	seen := map[string]bool{}
	for _, s := range sources {
		if seen[s.Station] {
			return nil, fmt.Errorf("two ledgers are both labelled station %q: give each its own name with --station NAME=PATH", s.Station)
		}
		seen[s.Station] = true
	}
	return buildHTML(ctx, sources, true, opts)
}

// htmlBuilder aggregates devices into an HTMLReport.
type htmlBuilder struct {
	r         *HTMLReport
	stations  []StationSummary
	first     time.Time // of the whole report
	groups    map[int]*FailureGroup
	latencies []float64
	byState   map[ledger.State]int
	byHub     map[string]int
}

// add counts one ledger row of a device, from station i.
func (b *htmlBuilder) add(i int, d ledger.Device) {
	r, st := b.r, &b.stations[i]
	r.Total++
	st.Devices++
	b.byState[d.State]++
	st.ByState[d.State]++
	r.Billable += d.Attempts
	st.Billable += d.Attempts
	r.Polls += d.Polls
	st.Polls += d.Polls
	if d.Attempts > 1 {
		r.Retries += d.Attempts - 1
		st.Retries += d.Attempts - 1
	}
	if d.State == ledger.StateAssigned {
		r.Assigned++
		st.Assigned++
		b.byHub[d.AssignedHub]++
		if !d.FinishedAt.IsZero() && r.Throughput != nil {
			if k := int(d.FinishedAt.Sub(b.first) / r.Step); k >= 0 && k < len(r.Throughput) {
				r.Throughput[k]++
				if st.Throughput != nil {
					st.Throughput[k]++
				}
			}
		}
	}
	if d.State.Final() && !d.FirstAttemptAt.IsZero() && !d.FinishedAt.IsZero() && !d.FinishedAt.Before(d.FirstAttemptAt) {
		b.latencies = append(b.latencies, d.FinishedAt.Sub(d.FirstAttemptAt).Seconds())
	}
	reason := attentionReason(d)
	if reason == "" {
		return
	}
	if d.State != ledger.StateAssigned {
		g := b.groups[d.ErrorCode]
		if g == nil {
			g = &FailureGroup{Code: d.ErrorCode, Status: d.HTTPStatus, Message: d.ErrorMessage, Hint: d.Hint}
			b.groups[d.ErrorCode] = g
		}
		g.N++
		if len(g.IDs) < failureIDs {
			g.IDs = append(g.IDs, d.RegistrationID)
			if r.Merge != nil {
				g.Stations = append(g.Stations, st.Station)
			}
		}
		if g.Hint == "" {
			g.Hint = d.Hint
		}
	}
	r.NAttention++
	if len(r.Attention) < r.AttentionAt {
		row := AttentionRow{Device: d, Reason: reason}
		if r.Merge != nil {
			row.Station = st.Station
		}
		r.Attention = append(r.Attention, row)
	}
}

// buildHTML aggregates the ledgers of srcs (one, unless merged) into the
// report.
func buildHTML(ctx context.Context, srcs Sources, merged bool, opts HTMLOptions) (*HTMLReport, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	r := &HTMLReport{Title: opts.Title, GeneratedAt: now().UTC(), AttentionAt: opts.AttentionLimit}
	if r.Title == "" {
		r.Title = "dps-batch run report"
	}
	if r.AttentionAt <= 0 {
		r.AttentionAt = DefaultAttentionLimit
	}
	intervals := opts.Intervals
	if intervals <= 0 {
		intervals = 60
	}
	b := &htmlBuilder{r: r, groups: map[int]*FailureGroup{}, byState: map[ledger.State]int{}, byHub: map[string]int{},
		stations: make([]StationSummary, len(srcs))}
	index := map[string]int{}
	if merged {
		r.Merge = &MergeResult{}
	} else {
		r.Ledger = srcs[0].Ledger.Path()
	}

	// The time axis spans every ledger's activity.
	for i, src := range srcs {
		span, err := src.Ledger.TimeSpan(ctx)
		if err != nil {
			return nil, fmt.Errorf("ledger %s: %w", src.Path, err)
		}
		b.stations[i] = StationSummary{Station: src.Station, Path: src.Path, ByState: map[ledger.State]int{}, First: span.First, Last: span.Last}
		index[src.Station] = i
		if !span.First.IsZero() && (r.First.IsZero() || span.First.Before(r.First)) {
			r.First = span.First
		}
		if span.Last.After(r.Last) {
			r.Last = span.Last
		}
	}
	b.first = r.First
	if !r.First.IsZero() {
		r.Duration = r.Last.Sub(r.First)
		r.Step = niceStep(r.Duration / time.Duration(intervals))
		r.Throughput = make([]int, int(r.Duration/r.Step)+1)
		r.Throttles = make([]int, len(r.Throughput))
		if merged {
			for i := range b.stations {
				b.stations[i].Throughput = make([]int, len(r.Throughput))
			}
		}
	}

	var err error
	if !merged {
		err = srcs[0].Ledger.Each(ctx, nil, func(d ledger.Device) error {
			b.add(0, d)
			return nil
		})
		if err != nil {
			err = fmt.Errorf("ledger %s: %w", srcs[0].Path, err)
		}
	} else {
		res := r.Merge
		err = srcs.each(ctx, nil, false, func(entries []Entry) error {
			res.Devices++
			if len(entries) > 1 {
				if Conflicting(entries) {
					res.Conflicts++
					c := Conflict{RegistrationID: entries[0].Device.RegistrationID, Entries: append([]Entry(nil), entries...)}
					if len(res.Examples) < maxConflictExamples {
						res.Examples = append(res.Examples, c)
					}
					if len(r.Conflicts) < r.AttentionAt {
						r.Conflicts = append(r.Conflicts, c)
					}
				} else {
					res.Shared++
				}
			}
			for _, en := range entries {
				res.Rows++
				b.add(index[en.Station], en.Device)
			}
			return nil
		})
	}
	if err != nil {
		return nil, err
	}

	for i, src := range srcs {
		st := &b.stations[i]
		var total int
		var buckets []ledger.StatusBucket
		var err error
		if r.Step > 0 {
			total, buckets, err = src.Ledger.AttemptsWithStatus(ctx, 429, r.First, r.Step)
		} else {
			total, _, err = src.Ledger.AttemptsWithStatus(ctx, 429, time.Time{}, time.Hour)
		}
		if err != nil {
			return nil, fmt.Errorf("ledger %s: %w", src.Path, err)
		}
		r.Throttled += total
		st.Throttled = total
		for _, bk := range buckets {
			if bk.Index >= 0 && bk.Index < len(r.Throttles) {
				r.Throttles[bk.Index] += bk.N
			}
		}
		if !st.First.IsZero() {
			st.Duration = st.Last.Sub(st.First)
			if s := st.Duration.Seconds(); s > 0 {
				st.PerSecond = float64(st.Assigned) / s
			}
		}

		runs, err := src.Ledger.Runs(ctx, 0)
		if err != nil {
			return nil, fmt.Errorf("ledger %s: %w", src.Path, err)
		}
		for _, run := range runs {
			row := RunRow{Run: run, Options: joinMap(run.Options), Counts: joinCounts(run.Counts)}
			if merged {
				row.Station = src.Station
			}
			if !run.FinishedAt.IsZero() {
				row.Duration = run.FinishedAt.Sub(run.StartedAt)
			}
			r.Runs = append(r.Runs, row)
		}
	}
	if merged {
		// One history: the stations' runs in the order they started.
		sort.SliceStable(r.Runs, func(i, j int) bool { return r.Runs[i].StartedAt.Before(r.Runs[j].StartedAt) })
		r.Stations = b.stations
		for _, st := range b.stations {
			r.Merge.Stations = append(r.Merge.Stations, StationTotals{Station: st.Station, Path: st.Path, Devices: st.Devices, ByState: st.ByState})
		}
	}

	for _, s := range ledger.States() {
		if n := b.byState[s]; n > 0 {
			r.States = append(r.States, StateCount{State: s, N: n, Pct: pct(n, r.Total)})
			r.StateColumns = append(r.StateColumns, s)
		}
	}
	for hub, n := range b.byHub {
		r.Hubs = append(r.Hubs, HubCount{Hub: hub, N: n, Pct: pct(n, r.Assigned)})
	}
	sort.Slice(r.Hubs, func(i, j int) bool {
		if r.Hubs[i].N != r.Hubs[j].N {
			return r.Hubs[i].N > r.Hubs[j].N
		}
		return r.Hubs[i].Hub < r.Hubs[j].Hub
	})
	if s := r.Duration.Seconds(); s > 0 {
		r.PerSecond = float64(r.Assigned) / s
	}
	if r.Step > 0 {
		for _, n := range r.Throughput {
			r.PeakPerSec = math.Max(r.PeakPerSec, float64(n)/r.Step.Seconds())
		}
	}

	for _, g := range b.groups {
		r.Failures = append(r.Failures, *g)
	}
	sort.Slice(r.Failures, func(i, j int) bool {
		if r.Failures[i].N != r.Failures[j].N {
			return r.Failures[i].N > r.Failures[j].N
		}
		return r.Failures[i].Code < r.Failures[j].Code
	})

	latencies := b.latencies
	if len(latencies) > 0 {
		slices.Sort(latencies)
		r.Latency = LatencySummary{
			N:   len(latencies),
			P50: stat.Quantile(0.50, stat.Empirical, latencies, nil),
			P95: stat.Quantile(0.95, stat.Empirical, latencies, nil),
			P99: stat.Quantile(0.99, stat.Empirical, latencies, nil),
			Max: latencies[len(latencies)-1],
		}
	}

	if err := r.drawCharts(latencies); err != nil {
		return nil, err
	}
	return r, nil
}

// attentionReason says why a device needs attention, "" when it does not.
func attentionReason(d ledger.Device) string {
	switch d.State {
	case ledger.StateFailed, ledger.StateDisabled, ledger.StateRetryable, ledger.StateIssuedLost:
		return string(d.State)
	case ledger.StateAssigned:
		if strings.HasPrefix(d.Hint, "credentials changed") {
			return "credentials-changed"
		}
	}
	return ""
}

func pct(n, of int) float64 {
	if of == 0 {
		return 0
	}
	return 100 * float64(n) / float64(of)
}

// niceStep rounds d up to a step a reader counts in.
func niceStep(d time.Duration) time.Duration {
	for _, s := range []time.Duration{
		time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second,
		time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 15 * time.Minute, 30 * time.Minute,
		time.Hour, 2 * time.Hour, 6 * time.Hour, 12 * time.Hour,
	} {
		if d <= s {
			return s
		}
	}
	return (d + 24*time.Hour - 1).Truncate(24 * time.Hour)
}

func joinMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, " ")
}

func joinCounts(m map[ledger.State]int) string {
	var parts []string
	for _, s := range ledger.States() {
		if n, ok := m[s]; ok {
			parts = append(parts, fmt.Sprintf("%s %s", s, formatCount(n)))
		}
	}
	return strings.Join(parts, ", ")
}

// formatCount writes n with thousands separators.
func formatCount(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// formatDuration rounds d for reading: ms below a second, then 0.1 s, then s.
func formatDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// formatSeconds writes a latency: milliseconds below a second, else
// seconds to the hundredth.
func formatSeconds(f float64) string {
	if f < 1 {
		return strconv.FormatFloat(f*1000, 'f', 0, 64) + " ms"
	}
	return strconv.FormatFloat(f, 'f', 2, 64) + " s"
}

// maxStationLines is how many stations the throughput chart draws a line
// for besides the total; with more, only the total is drawn.
const maxStationLines = 6

// stationColors are the station lines' colours: gonum/plot's soft palette
// without its red, which marks 429s.
var stationColors = plotutil.SoftColors[1:]

// The charts' colours.
var (
	colorAssigned = color.RGBA{R: 0x1f, G: 0x6f, B: 0xb5, A: 0xff}
	colorThrottle = color.RGBA{R: 0xd9, G: 0x3a, B: 0x2b, A: 0xff}
	colorHub      = color.RGBA{R: 0x2e, G: 0x8b, B: 0x57, A: 0xff}
)

const (
	chartWidth  = 17 * vg.Centimeter
	chartHeight = 7 * vg.Centimeter
)

// chartFont is the charts' font: a sans-serif face of the fonts gonum/plot
// ships, named in the SVG so that the browser draws it with its own.
var chartFont = font.Font{Typeface: "Liberation", Variant: "Sans"}

// newPlot returns a plot whose texts use chartFont.
func newPlot() *plot.Plot {
	p := plot.New()
	for _, t := range []*text.Style{&p.Title.TextStyle, &p.X.Label.TextStyle, &p.Y.Label.TextStyle, &p.X.Tick.Label, &p.Y.Tick.Label, &p.Legend.TextStyle} {
		t.Font.Typeface, t.Font.Variant = chartFont.Typeface, chartFont.Variant
	}
	return p
}

// drawCharts renders the charts that have data.
func (r *HTMLReport) drawCharts(latencies []float64) error {
	if len(r.Throughput) > 0 {
		p := newPlot()
		p.Title.Text = fmt.Sprintf("Devices assigned per %s", r.Step)
		unit, name := time.Minute, "minutes"
		switch {
		case r.Duration < 5*time.Minute:
			unit, name = time.Second, "seconds"
		case r.Duration > 5*time.Hour:
			unit, name = time.Hour, "hours"
		}
		p.X.Label.Text = name + " since the first request"
		p.Y.Label.Text = "devices assigned"
		minutes := float64(r.Step) / float64(unit) // one interval in the axis' unit
		xys := make(plotter.XYs, len(r.Throughput))
		for i, n := range r.Throughput {
			xys[i] = plotter.XY{X: float64(i) * minutes, Y: float64(n)}
		}
		line, err := plotter.NewLine(xys)
		if err != nil {
			return err
		}
		line.Color, line.Width = colorAssigned, vg.Points(1.5)
		p.Add(plotter.NewGrid(), line)
		if len(r.Stations) > 1 {
			p.Legend.Add("assigned, all stations", line)
		} else {
			p.Legend.Add("assigned", line)
		}
		if len(r.Stations) > 1 && len(r.Stations) <= maxStationLines {
			// A thinner dashed line per station under the total.
			for i, st := range r.Stations {
				xys := make(plotter.XYs, len(st.Throughput))
				for k, n := range st.Throughput {
					xys[k] = plotter.XY{X: float64(k) * minutes, Y: float64(n)}
				}
				sl, err := plotter.NewLine(xys)
				if err != nil {
					return err
				}
				sl.Color, sl.Width, sl.Dashes = stationColors[i%len(stationColors)], vg.Points(1), []vg.Length{vg.Points(3), vg.Points(2)}
				p.Add(sl)
				p.Legend.Add(st.Station, sl)
			}
		}
		if r.Throttled > 0 {
			// Each interval with 429 answers is marked by a red bar at the
			// foot of the chart, as high as the interval's share of them.
			var marks plotter.XYs
			for i, n := range r.Throttles {
				if n > 0 {
					marks = append(marks, plotter.XY{X: (float64(i) + 0.5) * minutes, Y: float64(n)})
				}
			}
			bars, err := plotter.NewScatter(marks)
			if err != nil {
				return err
			}
			bars.GlyphStyle.Color = colorThrottle
			bars.GlyphStyle.Shape = draw.TriangleGlyph{}
			bars.GlyphStyle.Radius = vg.Points(3.5)
			p.Add(bars)
			p.Legend.Add("429 answers in the interval (pacer backs off)", bars)
		}
		p.Legend.Top = true
		p.Y.Min = 0
		if err := r.addChart("throughput", "Throughput over time", p); err != nil {
			return err
		}
	}
	if len(latencies) > 0 {
		p := newPlot()
		p.Title.Text = "First request to final answer"
		p.X.Label.Text = "seconds"
		p.Y.Label.Text = "devices"
		bins := 40
		if len(latencies) < bins {
			bins = max(1, len(latencies))
		}
		h, err := plotter.NewHist(plotter.Values(latencies), bins)
		if err != nil {
			return err
		}
		h.FillColor = colorAssigned
		h.LineStyle.Width = 0
		p.Add(plotter.NewGrid(), h)
		for _, q := range []struct {
			name string
			v    float64
			dash []vg.Length
		}{{"p50", r.Latency.P50, nil}, {"p95", r.Latency.P95, []vg.Length{vg.Points(4), vg.Points(2)}}, {"p99", r.Latency.P99, []vg.Length{vg.Points(1), vg.Points(2)}}} {
			line, err := plotter.NewLine(plotter.XYs{{X: q.v, Y: 0}, {X: q.v, Y: maxBin(h)}})
			if err != nil {
				return err
			}
			line.Color, line.Width, line.Dashes = colorThrottle, vg.Points(1), q.dash
			p.Add(line)
			p.Legend.Add(q.name+" "+formatSeconds(q.v), line)
		}
		p.Legend.Top = true
		if err := r.addChart("latency", "Latency distribution", p); err != nil {
			return err
		}
	}
	if len(r.Hubs) > 0 {
		p := newPlot()
		p.Title.Text = "Devices per IoT hub"
		p.X.Label.Text = "devices assigned"
		values := make(plotter.Values, len(r.Hubs))
		names := make([]string, len(r.Hubs))
		for i, h := range r.Hubs {
			// The first hub (the largest) is drawn at the top.
			j := len(r.Hubs) - 1 - i
			values[j], names[j] = float64(h.N), h.Hub
		}
		bars, err := plotter.NewBarChart(values, vg.Points(14))
		if err != nil {
			return err
		}
		bars.Horizontal, bars.Color, bars.LineStyle.Width = true, colorHub, 0
		p.Add(bars)
		p.NominalY(names...)
		p.X.Min = 0
		height := max(chartHeight/2, vg.Points(float64(30+20*len(names))))
		if err := r.addChartSized("hubs", "Devices per IoT hub", p, chartWidth, height); err != nil {
			return err
		}
	}
	return nil
}

func maxBin(h *plotter.Histogram) float64 {
	m := 0.0
	for _, b := range h.Bins {
		m = math.Max(m, b.Weight)
	}
	return m
}

func (r *HTMLReport) addChart(id, title string, p *plot.Plot) error {
	return r.addChartSized(id, title, p, chartWidth, chartHeight)
}

// addChartSized renders p with gonum/plot's SVG back end and keeps the
// <svg> element (without the XML prologue) for inlining.
func (r *HTMLReport) addChartSized(id, title string, p *plot.Plot, w, h vg.Length) error {
	c := vgsvg.New(w, h)
	p.Draw(draw.New(c))
	var buf bytes.Buffer
	if _, err := c.WriteTo(&buf); err != nil {
		return fmt.Errorf("chart %s: %w", id, err)
	}
	s := buf.String()
	i := strings.Index(s, "<svg")
	if i < 0 {
		return fmt.Errorf("chart %s: the SVG back end wrote no <svg> element", id)
	}
	s = `<svg role="img" aria-label="` + template.HTMLEscapeString(title) + `" data-chart="` + id + `"` + s[i+len("<svg"):]
	r.Charts = append(r.Charts, Chart{ID: id, Title: title, SVG: template.HTML(s)})
	return nil
}

// Chart returns the chart with the id, if drawn.
func (r *HTMLReport) Chart(id string) *Chart {
	for i := range r.Charts {
		if r.Charts[i].ID == id {
			return &r.Charts[i]
		}
	}
	return nil
}
