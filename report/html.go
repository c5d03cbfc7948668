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

// HTMLReport is what the HTML report shows, aggregated from the ledger
// while its devices stream past: nothing per device is kept except one
// latency per finished device and the capped attention table.
type HTMLReport struct {
	Title       string
	Ledger      string
	GeneratedAt time.Time

	Total       int
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
}

// RunRow is one run of the run history.
type RunRow struct {
	ledger.Run
	Options  string
	Counts   string
	Duration time.Duration
}

// AttentionRow is a device that needs attention.
type AttentionRow struct {
	ledger.Device
	Reason string
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
	var buf bytes.Buffer
	if err := htmlTmpl.Execute(&buf, r); err != nil {
		return 0, err
	}
	_, err = buf.WriteTo(w)
	return r.Total, err
}

// BuildHTMLReport reads l into the HTMLReport WriteHTML renders.
func BuildHTMLReport(ctx context.Context, l *ledger.Ledger, opts HTMLOptions) (*HTMLReport, error) {
	now := time.Now
	if opts.Now != nil {
		now = opts.Now
	}
	r := &HTMLReport{Title: opts.Title, Ledger: l.Path(), GeneratedAt: now().UTC(), AttentionAt: opts.AttentionLimit}
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

	counts, err := l.Counts(ctx)
	if err != nil {
		return nil, err
	}
	span, err := l.TimeSpan(ctx)
	if err != nil {
		return nil, err
	}
	r.Total, r.Billable, r.Polls = counts.Total, counts.Attempts, counts.Polls
	r.Assigned = counts.ByState[ledger.StateAssigned]
	for _, s := range ledger.States() {
		if n := counts.ByState[s]; n > 0 {
			r.States = append(r.States, StateCount{State: s, N: n, Pct: pct(n, r.Total)})
		}
	}
	for hub, n := range counts.ByHub {
		r.Hubs = append(r.Hubs, HubCount{Hub: hub, N: n, Pct: pct(n, r.Assigned)})
	}
	sort.Slice(r.Hubs, func(i, j int) bool {
		if r.Hubs[i].N != r.Hubs[j].N {
			return r.Hubs[i].N > r.Hubs[j].N
		}
		return r.Hubs[i].Hub < r.Hubs[j].Hub
	})

	r.First, r.Last = span.First, span.Last
	if !span.First.IsZero() {
		r.Duration = span.Last.Sub(span.First)
		r.Step = niceStep(r.Duration / time.Duration(intervals))
		r.Throughput = make([]int, int(r.Duration/r.Step)+1)
		r.Throttles = make([]int, len(r.Throughput))
		if s := r.Duration.Seconds(); s > 0 {
			r.PerSecond = float64(r.Assigned) / s
		}
	}

	groups := map[int]*FailureGroup{}
	var latencies []float64
	err = l.Each(ctx, nil, func(d ledger.Device) error {
		if d.Attempts > 1 {
			r.Retries += d.Attempts - 1
		}
		if d.State == ledger.StateAssigned && !d.FinishedAt.IsZero() && r.Throughput != nil {
			if i := int(d.FinishedAt.Sub(span.First) / r.Step); i >= 0 && i < len(r.Throughput) {
				r.Throughput[i]++
			}
		}
		if d.State.Final() && !d.FirstAttemptAt.IsZero() && !d.FinishedAt.IsZero() && !d.FinishedAt.Before(d.FirstAttemptAt) {
			latencies = append(latencies, d.FinishedAt.Sub(d.FirstAttemptAt).Seconds())
		}
		reason := attentionReason(d)
		if reason == "" {
			return nil
		}
		if d.State != ledger.StateAssigned {
			g := groups[d.ErrorCode]
			if g == nil {
				g = &FailureGroup{Code: d.ErrorCode, Status: d.HTTPStatus, Message: d.ErrorMessage, Hint: d.Hint}
				groups[d.ErrorCode] = g
			}
			g.N++
			if len(g.IDs) < failureIDs {
				g.IDs = append(g.IDs, d.RegistrationID)
			}
			if g.Hint == "" {
				g.Hint = d.Hint
			}
		}
		r.NAttention++
		if len(r.Attention) < r.AttentionAt {
			r.Attention = append(r.Attention, AttentionRow{Device: d, Reason: reason})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, g := range groups {
		r.Failures = append(r.Failures, *g)
	}
	sort.Slice(r.Failures, func(i, j int) bool {
		if r.Failures[i].N != r.Failures[j].N {
			return r.Failures[i].N > r.Failures[j].N
		}
		return r.Failures[i].Code < r.Failures[j].Code
	})

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

	if r.Step > 0 {
		total, buckets, err := l.AttemptsWithStatus(ctx, 429, span.First, r.Step)
		if err != nil {
			return nil, err
		}
		r.Throttled = total
		for _, b := range buckets {
			if b.Index >= 0 && b.Index < len(r.Throttles) {
				r.Throttles[b.Index] += b.N
			}
		}
		for _, n := range r.Throughput {
			r.PeakPerSec = math.Max(r.PeakPerSec, float64(n)/r.Step.Seconds())
		}
	} else {
		total, _, err := l.AttemptsWithStatus(ctx, 429, time.Time{}, time.Hour)
		if err != nil {
			return nil, err
		}
		r.Throttled = total
	}

	runs, err := l.Runs(ctx, 0)
	if err != nil {
		return nil, err
	}
	for _, run := range runs {
		row := RunRow{Run: run, Options: joinMap(run.Options), Counts: joinCounts(run.Counts)}
		if !run.FinishedAt.IsZero() {
			row.Duration = run.FinishedAt.Sub(run.StartedAt)
		}
		r.Runs = append(r.Runs, row)
	}

	if err := r.drawCharts(latencies); err != nil {
		return nil, err
	}
	return r, nil
}

// attentionReason says why a device needs attention, "" when it does not.
func attentionReason(d ledger.Device) string {
	switch d.State {
	case ledger.StateFailed, ledger.StateDisabled, ledger.StateRetryable:
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
		p.Legend.Add("assigned", line)
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
