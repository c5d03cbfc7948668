package ledger_test

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
)

func TestBind(t *testing.T) {
	ctx := context.Background()
	path := tempPath(t)
	l := MustOpen(t, path, ledger.Options{})
	if _, _, ok, err := l.Binding(ctx); ok || err != nil {
		t.Fatalf("Binding() of a new ledger: ok=%v err=%v, want unbound", ok, err)
	}
	if err := l.Bind(ctx, "0ne00000A0A", "https://Global.Azure-Devices-Provisioning.net/"); err != nil {
		t.Fatalf("first Bind: %v", err)
	}
	scope, endpoint, ok, err := l.Binding(ctx)
	if err != nil || !ok || scope != "0ne00000A0A" || endpoint != "https://global.azure-devices-provisioning.net" {
		t.Errorf("Binding()=%q, %q, %v, %v; want the normalised first binding", scope, endpoint, ok, err)
	}

	for _, tt := range []struct {
		name, scope, endpoint string
		wantErr               bool
	}{
		{"Same", "0ne00000A0A", "https://global.azure-devices-provisioning.net", false},
		{"HostCase", "0ne00000A0A", "HTTPS://GLOBAL.azure-devices-provisioning.net", false},
		{"TrailingSlashes", "0ne00000A0A", "https://global.azure-devices-provisioning.net//", false},
		{"OtherScope", "0ne00000B0B", "https://global.azure-devices-provisioning.net", true},
		{"ScopeCase", "0NE00000A0A", "https://global.azure-devices-provisioning.net", true},
		{"OtherEndpoint", "0ne00000A0A", "https://127.0.0.1:8443", true},
		{"OtherPort", "0ne00000A0A", "https://global.azure-devices-provisioning.net:8443", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := l.Bind(ctx, tt.scope, tt.endpoint)
			if !tt.wantErr {
				if err != nil {
					t.Errorf("Bind(%q, %q)=%v, want nil", tt.scope, tt.endpoint, err)
				}
				return
			}
			var be *ledger.BindingError
			if !errors.As(err, &be) {
				t.Fatalf("Bind(%q, %q)=%v, want *BindingError", tt.scope, tt.endpoint, err)
			}
			want := ledger.BindingError{
				Path: path, HaveScope: "0ne00000A0A", HaveEndpoint: "https://global.azure-devices-provisioning.net",
				WantScope: tt.scope, WantEndpoint: strings.ToLower(tt.endpoint),
			}
			if *be != want {
				t.Errorf("BindingError=%+v, want %+v", *be, want)
			}
			if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, "use another --ledger file") {
				t.Errorf("error=%q, want it to name the file and suggest another --ledger file", msg)
			}
		})
	}

	t.Run("Empty", func(t *testing.T) {
		if err := l.Bind(ctx, "", "https://x"); err == nil {
			t.Errorf("Bind with empty scope succeeded")
		}
	})
	t.Run("KeptAcrossOpen", func(t *testing.T) {
		MustClose(t, l)
		r := MustOpen(t, path, ledger.Options{ReadOnly: true})
		var be *ledger.BindingError
		if err := r.Bind(ctx, "0ne00000B0B", "https://global.azure-devices-provisioning.net"); !errors.As(err, &be) {
			t.Errorf("read-only Bind with another scope: %v, want *BindingError", err)
		}
		if err := r.Bind(ctx, "0ne00000A0A", "https://global.azure-devices-provisioning.net/"); err != nil {
			t.Errorf("read-only Bind with the same binding: %v", err)
		}
	})
}

func TestRuns(t *testing.T) {
	ctx := context.Background()
	now := fixedNow
	l := MustOpen(t, tempPath(t), ledger.Options{Now: func() time.Time { return now }})
	if _, ok, err := l.LastRun(ctx); ok || err != nil {
		t.Fatalf("LastRun() of a new ledger: ok=%v err=%v, want none", ok, err)
	}

	first, err := l.StartRun(ctx, "provision", map[string]string{"workers": "32", "rate": "100"})
	if err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	if err := l.FinishRun(ctx, first, "interrupted", map[ledger.State]int{ledger.StateAssigned: 10, ledger.StateRetryable: 2}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	second, err := l.StartRun(ctx, "provision", nil)
	if err != nil {
		t.Fatal(err)
	}
	if second <= first {
		t.Errorf("StartRun ids %d then %d, want increasing", first, second)
	}

	// A run that never finished (killed) has a zero FinishedAt.
	got, ok, err := l.LastRun(ctx)
	if err != nil || !ok {
		t.Fatalf("LastRun: ok=%v err=%v", ok, err)
	}
	want := ledger.Run{ID: second, StartedAt: fixedNow.Add(2 * time.Minute), Command: "provision", Options: map[string]string{}, Counts: map[ledger.State]int{}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("LastRun()=%+v, want %+v", got, want)
	}

	now = now.Add(time.Minute)
	if err := l.FinishRun(ctx, second, "completed", map[ledger.State]int{ledger.StateAssigned: 12}); err != nil {
		t.Fatal(err)
	}
	got, _, err = l.LastRun(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want.FinishedAt, want.Outcome, want.Counts = fixedNow.Add(3*time.Minute), "completed", map[ledger.State]int{ledger.StateAssigned: 12}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("LastRun() after FinishRun=%+v, want %+v", got, want)
	}

	if err := l.FinishRun(ctx, 999, "completed", nil); !errors.Is(err, ledger.ErrUnknownRun) {
		t.Errorf("FinishRun(999) err=%v, want ErrUnknownRun", err)
	}
}

// TestRunsListing: Runs lists the newest runs first, killed ones with no
// finish time and no outcome, from a read-only ledger too.
func TestRunsListing(t *testing.T) {
	ctx := context.Background()
	now := fixedNow
	path := tempPath(t)
	l := MustOpen(t, path, ledger.Options{Now: func() time.Time { return now }})
	if runs, err := l.Runs(ctx, 10); err != nil || len(runs) != 0 {
		t.Fatalf("Runs() of a new ledger=%v err=%v, want none", runs, err)
	}
	var want []ledger.Run
	for i := 1; i <= 5; i++ {
		id, err := l.StartRun(ctx, "provision", map[string]string{"run": strconv.Itoa(i)})
		if err != nil {
			t.Fatal(err)
		}
		r := ledger.Run{ID: id, StartedAt: now, Command: "provision", Options: map[string]string{"run": strconv.Itoa(i)}, Counts: map[ledger.State]int{}}
		now = now.Add(time.Minute)
		if i != 3 && i != 5 { // runs 3 and 5 were killed (or 5 still runs)
			r.FinishedAt, r.Outcome, r.Counts = now, "completed", map[ledger.State]int{ledger.StateAssigned: i, ledger.StateFailed: 1}
			if err := l.FinishRun(ctx, id, r.Outcome, r.Counts); err != nil {
				t.Fatal(err)
			}
		}
		now = now.Add(time.Minute)
		want = append([]ledger.Run{r}, want...) // newest first
	}
	ro := MustOpen(t, path, ledger.Options{ReadOnly: true})
	for _, tt := range []struct {
		limit int
		want  []ledger.Run
	}{
		{1, want[:1]}, {3, want[:3]}, {5, want}, {50, want}, {0, want}, {-1, want},
	} {
		for name, led := range map[string]*ledger.Ledger{"ReadWrite": l, "ReadOnly": ro} {
			got, err := led.Runs(ctx, tt.limit)
			if err != nil {
				t.Fatalf("%s Runs(%d): %v", name, tt.limit, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s Runs(%d)=\n%+v\nwant\n%+v", name, tt.limit, got, tt.want)
			}
		}
	}
	if last, ok, err := l.LastRun(ctx); err != nil || !ok || !reflect.DeepEqual(last, want[0]) {
		t.Errorf("LastRun()=%+v ok=%v err=%v, want %+v", last, ok, err, want[0])
	}
	MustClose(t, l)
	if _, err := l.Runs(ctx, 1); !errors.Is(err, ledger.ErrClosed) {
		t.Errorf("Runs after Close err=%v, want ErrClosed", err)
	}
}
