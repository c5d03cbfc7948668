package report

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// browsers are the names a Chromium or Chrome binary goes by.
var browsers = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "headless-shell"}

// findBrowser returns the path of an installed Chromium or Chrome, or skips.
func findBrowser(t *testing.T) string {
	t.Helper()
	for _, name := range browsers {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skipf("no Chromium or Chrome installed (looked for %s on PATH): the HTML report was not checked in a browser; install one (apt-get install chromium) to run this test",
		strings.Join(browsers, ", "))
	return ""
}

// TestHTMLReportInBrowser opens a report in headless Chromium from a file
// URL, checks that every chart rendered with a size and that the page made
// no request but the file itself, and takes a screenshot: to
// REPORT_SCREENSHOT when set (make report-demo sets docs/report.png),
// else into the test's temporary folder.
func TestHTMLReportInBrowser(t *testing.T) {
	exe := findBrowser(t)
	dir := t.TempDir()
	file := os.Getenv("REPORT_HTML") // a report to check instead of the test's own
	if file == "" {
		file = filepath.Join(dir, "run.html")
		page := renderHTML(t, htmlFleet(t, 2000, true), HTMLOptions{Title: "dps-batch run report (test fleet)"})
		if err := os.WriteFile(file, []byte(page), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		t.Fatal(err)
	}
	url := "file://" + abs

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe), chromedp.NoSandbox, chromedp.WindowSize(1200, 900),
		chromedp.Flag("disable-background-networking", true))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	var (
		mu       sync.Mutex
		requests []string
		failed   []string
	)
	if err := chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *network.EventRequestWillBeSent:
			requests = append(requests, ev.Request.URL)
		case *network.EventLoadingFailed:
			failed = append(failed, ev.ErrorText)
		}
	}); err != nil {
		t.Fatalf("start %s: %v", exe, err)
	}

	type box struct {
		ID            string
		Width, Height float64
		Elements      int
	}
	err = chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.ID("attention")))
	if err != nil {
		t.Fatalf("load %s in %s: %v", url, exe, err)
	}
	charts, err := chromedp.Run(ctx, chromedp.Evaluate[[]box](`[...document.querySelectorAll("figure.chart")].map(f => {
		const s = f.querySelector("svg"); const r = s ? s.getBoundingClientRect() : {width: 0, height: 0};
		return {ID: f.id, Width: r.width, Height: r.height, Elements: s ? s.querySelectorAll("path, text").length : 0};
	})`))
	if err != nil {
		t.Fatalf("measure the charts: %v", err)
	}
	screenshot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if len(charts) != 3 {
		t.Errorf("%d charts rendered, want 3 (throughput, latency, hubs): %+v", len(charts), charts)
	}
	for _, c := range charts {
		if c.Width < 200 || c.Height < 80 || c.Elements < 10 {
			t.Errorf("chart %s rendered %.0f×%.0f px with %d elements", c.ID, c.Width, c.Height, c.Elements)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, u := range requests {
		if u != url {
			t.Errorf("the page made a request: %s", u)
		}
	}
	if len(requests) == 0 {
		t.Error("no network event seen: the listener did not work")
	}
	if len(failed) > 0 {
		t.Errorf("failed loads: %v", failed)
	}
	out := os.Getenv("REPORT_SCREENSHOT")
	if out == "" {
		out = filepath.Join(dir, "report.png")
	}
	if err := os.WriteFile(out, screenshot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s rendered in %s: %d charts, %d request(s) (the file itself); screenshot %s (%d bytes)", file, filepath.Base(exe), len(charts), len(requests), out, len(screenshot))
}
