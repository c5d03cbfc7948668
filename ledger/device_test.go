package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dps-batch/dps-batch/ledger"
)

// MustPut writes d (and its log) or fails the test.
func MustPut(tb testing.TB, l *ledger.Ledger, d ledger.Device, log ...ledger.Attempt) {
	tb.Helper()
	if err := l.Put(context.Background(), d, log...); err != nil {
		tb.Fatalf("Put(%s): %v", d.RegistrationID, err)
	}
}

// MustStartRun starts a run or fails the test.
func MustStartRun(tb testing.TB, l *ledger.Ledger) int64 {
	tb.Helper()
	id, err := l.StartRun(context.Background(), "provision", map[string]string{"workers": "8"})
	if err != nil {
		tb.Fatalf("StartRun: %v", err)
	}
	return id
}

func TestPut_RoundTrip(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, tempPath(t), ledger.Options{})
	run := MustStartRun(t, l)
	first := time.Date(2026, 2, 28, 23, 59, 58, 123_456_789, time.FixedZone("CET", 3600))
	finished := first.Add(1500 * time.Millisecond)

	for _, tt := range []struct {
		name string
		in   ledger.Device
	}{
		{
			name: "EveryField",
			in: ledger.Device{
				RegistrationID: "d-0042", State: ledger.StateAssigned,
				OperationID: "5.316aac5bdc130deb.b1e02da8-c3a0-4ff2-a121-7ea7a6b7f550",
				AssignedHub: "hub-1.azure-devices.net", DeviceID: "d-0042-dev", Substatus: "initialAssignment",
				ErrorCode: 429001, ErrorMessage: "Operations are being throttled", Hint: "lower --rate",
				HTTPStatus: 200, RequestID: "f40da7ba-1234-4ff2-a121-7ea7a6b7f550",
				Attempts: 3, Polls: 7, Fingerprint: "sha256:" + strings.Repeat("ab", 32),
				FirstAttemptAt: first, FinishedAt: finished, RunID: run,
				CampaignID: 0, PutAt: msUTC(first.Add(-time.Second)),
				Record:          ledger.Record{ETag: `"0a00b1c2-0000-0d00-0000-65f1a2b30000"`, Updated: "2026-02-28T22:59:59.5Z", Created: "2026-02-28T22:59:59.1Z"},
				ReturnedPayload: `{"line":3,"firmware":{"channel":"stable"},"note":"a, b \"quoted\" ü"}`,
			},
		},
		{
			name: "UpperCaseRequestID",
			in:   ledger.Device{RegistrationID: "d-upper", State: ledger.StateFailed, RequestID: "F40DA7BA-1234-4FF2-A121-7EA7A6B7F550"},
		},
		{
			name: "OpaqueRequestID",
			in:   ledger.Device{RegistrationID: "d-opaque", State: ledger.StateRetryable, RequestID: "not-a-guid|0000-0000-0000-0000-000000000"},
		},
		{
			name: "GUIDShapedButNotHex",
			in:   ledger.Device{RegistrationID: "d-nothex", State: ledger.StateRetryable, RequestID: "zzzzzzzz-1234-4ff2-a121-7ea7a6b7f550"},
		},
		{
			name: "ZeroValues",
			in:   ledger.Device{RegistrationID: "d-zero", State: ledger.StatePending},
		},
		{
			name: "Unicode",
			in:   ledger.Device{RegistrationID: "d-üñí", State: ledger.StateDisabled, ErrorMessage: "enrollment disabled — ask the owner\n'quoted' \"too\""},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			MustPut(t, l, tt.in)
			got, ok, err := l.Device(ctx, tt.in.RegistrationID)
			if err != nil || !ok {
				t.Fatalf("Device(%s): ok=%v err=%v", tt.in.RegistrationID, ok, err)
			}
			want := tt.in
			// Times are stored to the millisecond and read back in UTC;
			// UpdatedAt comes from the ledger's clock.
			want.FirstAttemptAt = msUTC(want.FirstAttemptAt)
			want.FinishedAt = msUTC(want.FinishedAt)
			want.UpdatedAt = fixedNow
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Device(%s)=\n%+v\nwant\n%+v", tt.in.RegistrationID, got, want)
			}
		})
	}

	t.Run("Overwrite", func(t *testing.T) {
		MustPut(t, l, ledger.Device{RegistrationID: "d-0042", State: ledger.StateRetryable, Attempts: 4})
		got, _, err := l.Device(ctx, "d-0042")
		if err != nil {
			t.Fatal(err)
		}
		// Put replaces the whole row: fields left empty are cleared.
		want := ledger.Device{RegistrationID: "d-0042", State: ledger.StateRetryable, Attempts: 4, UpdatedAt: fixedNow}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Device after overwrite=%+v, want %+v", got, want)
		}
	})

	t.Run("Unknown", func(t *testing.T) {
		if d, ok, err := l.Device(ctx, "nope"); err != nil || ok {
			t.Errorf("Device(nope)=%+v ok=%v err=%v, want not found", d, ok, err)
		}
	})
}

// msUTC truncates t to the millisecond in UTC, as the ledger stores it.
func msUTC(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return time.UnixMilli(t.UnixMilli()).UTC()
}

func TestPut_Attempts(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, tempPath(t), ledger.Options{})
	run := MustStartRun(t, l)
	at := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	d := ledger.Device{RegistrationID: "d-1", State: ledger.StateAssigning, RunID: run, Attempts: 1}
	reg := ledger.Attempt{Kind: "register", HTTPStatus: 202, RequestID: "b1e02da8-c3a0-4ff2-a121-7ea7a6b7f550", Latency: 123456 * time.Microsecond, At: at}
	poll := ledger.Attempt{RegistrationID: "d-1", RunID: run, Kind: "poll", HTTPStatus: 0, Latency: time.Millisecond, At: at.Add(3 * time.Second)}
	MustPut(t, l, d, reg, poll)
	d.State = ledger.StateAssigned
	MustPut(t, l, d, ledger.Attempt{Kind: "lookup", HTTPStatus: 429, ErrorCode: 429001, RequestID: "opaque-id"})

	got, err := l.Attempts(ctx, "d-1")
	if err != nil {
		t.Fatal(err)
	}
	want := []ledger.Attempt{
		{RegistrationID: "d-1", RunID: run, Kind: "register", HTTPStatus: 202, RequestID: reg.RequestID, Latency: reg.Latency, At: at},
		{RegistrationID: "d-1", RunID: run, Kind: "poll", Latency: time.Millisecond, At: at.Add(3 * time.Second)},
		// A zero At is the commit time.
		{RegistrationID: "d-1", RunID: run, Kind: "lookup", HTTPStatus: 429, ErrorCode: 429001, RequestID: "opaque-id", At: fixedNow},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Attempts(d-1)=\n%+v\nwant\n%+v", got, want)
	}
	if got, err := l.Attempts(ctx, "nope"); err != nil || len(got) != 0 {
		t.Errorf("Attempts(nope)=%v err=%v, want none", got, err)
	}
}

func TestPut_Invalid(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, tempPath(t), ledger.Options{})
	ok := ledger.Device{RegistrationID: "d-1", State: ledger.StatePending}
	for _, tt := range []struct {
		name    string
		d       ledger.Device
		log     []ledger.Attempt
		wantMsg string
		wantIs  error
	}{
		{"EmptyID", ledger.Device{State: ledger.StatePending}, nil, "empty registration id", nil},
		{"UnknownState", ledger.Device{RegistrationID: "d-1", State: "done"}, nil, `device d-1: unknown state "done"`, nil},
		{"EmptyState", ledger.Device{RegistrationID: "d-1"}, nil, `unknown state ""`, nil},
		{"UnknownKind", ok, []ledger.Attempt{{Kind: "delete"}}, `unknown attempt kind "delete"`, nil},
		{"OtherDevice", ok, []ledger.Attempt{{RegistrationID: "d-2", Kind: "poll"}}, "attempt is for device d-2", nil},
		{"UnknownRun", ledger.Device{RegistrationID: "d-1", State: ledger.StatePending, RunID: 99}, nil, "write device d-1: unknown run id", ledger.ErrUnknownRun},
		{"UnknownAttemptRun", ok, []ledger.Attempt{{Kind: "poll", RunID: 98}}, "log attempt of device d-1: unknown run id", ledger.ErrUnknownRun},
		{"PayloadTooLarge", ledger.Device{RegistrationID: "d-1", State: ledger.StateAssigned,
			ReturnedPayload: `{"x":"` + strings.Repeat("a", ledger.MaxReturnedPayload) + `"}`}, nil, "returned payload of 16392 bytes, more than 16384", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := l.Put(ctx, tt.d, tt.log...)
			if err == nil || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Put err=%v, want it to contain %q", err, tt.wantMsg)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("Put err=%v, want errors.Is %v", err, tt.wantIs)
			}
		})
	}
	// Nothing of the refused writes reached the ledger.
	if c, err := l.Counts(ctx); err != nil || c.Total != 0 {
		t.Errorf("Counts()=%+v err=%v, want empty ledger", c, err)
	}
}

func TestAddPending(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, tempPath(t), ledger.Options{})
	run := MustStartRun(t, l)
	MustPut(t, l, ledger.Device{RegistrationID: "d-2", State: ledger.StateAssigned, AssignedHub: "hub"})

	added, err := l.AddPending(ctx, []ledger.Device{
		{RegistrationID: "d-1", Fingerprint: "key:0011223344556677", RunID: run, State: ledger.StateAssigned, AssignedHub: "ignored"},
		{RegistrationID: "d-2", Fingerprint: "key:ffff"}, // known: untouched
		{RegistrationID: "d-3"},
		{RegistrationID: "d-3"}, // duplicate in the chunk
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := added, 2; got != want {
		t.Errorf("AddPending added %d, want %d", got, want)
	}
	for _, want := range []ledger.Device{
		{RegistrationID: "d-1", State: ledger.StatePending, Fingerprint: "key:0011223344556677", RunID: run, UpdatedAt: fixedNow},
		{RegistrationID: "d-2", State: ledger.StateAssigned, AssignedHub: "hub", UpdatedAt: fixedNow},
		{RegistrationID: "d-3", State: ledger.StatePending, UpdatedAt: fixedNow},
	} {
		got, ok, err := l.Device(ctx, want.RegistrationID)
		if err != nil || !ok {
			t.Fatalf("Device(%s): ok=%v err=%v", want.RegistrationID, ok, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Device(%s)=%+v, want %+v", want.RegistrationID, got, want)
		}
	}

	t.Run("EmptyIDRefusesChunk", func(t *testing.T) {
		_, err := l.AddPending(ctx, []ledger.Device{{RegistrationID: "d-9"}, {}})
		if err == nil || !strings.Contains(err.Error(), "device 2 of 2 has an empty registration id") {
			t.Errorf("AddPending err=%v, want empty id error naming device 2", err)
		}
		if _, ok, _ := l.Device(ctx, "d-9"); ok {
			t.Errorf("refused chunk was partly written")
		}
	})
	t.Run("UnknownRunRollsBack", func(t *testing.T) {
		_, err := l.AddPending(ctx, []ledger.Device{{RegistrationID: "d-10"}, {RegistrationID: "d-11", RunID: 42}})
		if !errors.Is(err, ledger.ErrUnknownRun) || !strings.Contains(err.Error(), "d-11") {
			t.Errorf("AddPending err=%v, want ErrUnknownRun naming d-11", err)
		}
		if _, ok, _ := l.Device(ctx, "d-10"); ok {
			t.Errorf("failed chunk was partly written")
		}
	})
}

// fleet writes n devices whose state cycles through all states; device i is
// "d-%05d" and, when assigned, on hub "hub-(i%3)".
func fleet(tb testing.TB, l *ledger.Ledger, n int) map[ledger.State]int {
	tb.Helper()
	states := ledger.States()
	want := map[ledger.State]int{}
	for i := range n {
		d := ledger.Device{RegistrationID: fmt.Sprintf("d-%05d", i), State: states[i%len(states)], Attempts: 1, Polls: 2}
		if d.State == ledger.StateAssigned || d.State == ledger.StateIssuedLost {
			d.AssignedHub = fmt.Sprintf("hub-%d", i%3)
		}
		MustPut(tb, l, d)
		want[d.State]++
	}
	return want
}

func TestCounts(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, tempPath(t), ledger.Options{})
	if c, err := l.Counts(ctx); err != nil || c.Total != 0 || len(c.ByState) != 0 || len(c.ByHub) != 0 {
		t.Errorf("Counts() of empty ledger=%+v err=%v", c, err)
	}
	wantStates := fleet(t, l, 700)
	got, err := l.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := ledger.Counts{Total: 700, ByState: wantStates, ByHub: map[string]int{}, Attempts: 700, Polls: 1400}
	for i := 3; i < 700; i += len(ledger.States()) { // assigned devices; issued-lost ones (i+1) are not counted per hub
		want.ByHub[fmt.Sprintf("hub-%d", i%3)]++
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Counts()=%+v, want %+v", got, want)
	}
}

func TestEach(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, tempPath(t), ledger.Options{})
	const n = 1300 // more than two pages
	wantStates := fleet(t, l, n)

	for _, tt := range []struct {
		name   string
		states []ledger.State
		want   int
	}{
		{"All", nil, n},
		{"Empty", []ledger.State{}, n},
		{"Pending", []ledger.State{ledger.StatePending}, wantStates[ledger.StatePending]},
		{"Resumable", []ledger.State{ledger.StateRegistering, ledger.StateAssigning, ledger.StateRetryable},
			wantStates[ledger.StateRegistering] + wantStates[ledger.StateAssigning] + wantStates[ledger.StateRetryable]},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var ids []string
			err := l.Each(ctx, tt.states, func(d ledger.Device) error {
				if len(tt.states) > 0 && !slices.Contains(tt.states, d.State) {
					t.Errorf("Each returned %s in state %s, not in %v", d.RegistrationID, d.State, tt.states)
				}
				ids = append(ids, d.RegistrationID)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := len(ids); got != tt.want {
				t.Errorf("Each visited %d devices, want %d", got, tt.want)
			}
			if !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != len(ids) {
				t.Errorf("Each order is not strictly by registration id")
			}
		})
	}

	t.Run("FnErrorStops", func(t *testing.T) {
		stop := errors.New("stop")
		calls := 0
		err := l.Each(ctx, nil, func(ledger.Device) error {
			calls++
			if calls == 10 {
				return stop
			}
			return nil
		})
		if err != stop || calls != 10 {
			t.Errorf("Each err=%v after %d calls, want the fn error after 10", err, calls)
		}
	})

	t.Run("PutDuringEach", func(t *testing.T) {
		// The runner resumes devices while iterating: Each must not hold
		// anything Put needs.
		visited := 0
		err := l.Each(ctx, []ledger.State{ledger.StatePending}, func(d ledger.Device) error {
			visited++
			d.State = ledger.StateAssigned
			return l.Put(ctx, d)
		})
		if err != nil {
			t.Fatal(err)
		}
		if visited != wantStates[ledger.StatePending] {
			t.Errorf("visited %d pending devices, want %d", visited, wantStates[ledger.StatePending])
		}
		c, err := l.Counts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.ByState[ledger.StatePending]; got != 0 {
			t.Errorf("%d devices still pending after Each+Put", got)
		}
	})

	t.Run("UnknownState", func(t *testing.T) {
		err := l.Each(ctx, []ledger.State{"bogus"}, func(ledger.Device) error { return nil })
		if err == nil || !strings.Contains(err.Error(), `unknown state "bogus"`) {
			t.Errorf("Each err=%v, want unknown state", err)
		}
	})

	t.Run("Cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		calls := 0
		err := l.Each(cctx, nil, func(ledger.Device) error {
			calls++
			if calls == 5 {
				cancel()
			}
			return nil
		})
		if !errors.Is(err, context.Canceled) || calls != 5 {
			t.Errorf("Each err=%v after %d calls, want context.Canceled after 5", err, calls)
		}
	})
}

func TestState_Final(t *testing.T) {
	for _, tt := range []struct {
		s    ledger.State
		want bool
	}{
		{ledger.StatePending, false}, {ledger.StateRegistering, false}, {ledger.StateAssigning, false},
		{ledger.StateAssigned, true}, {ledger.StateDisabled, true}, {ledger.StateFailed, true},
		{ledger.StateRetryable, false}, {ledger.StateIssuedLost, true},
	} {
		if got := tt.s.Final(); got != tt.want {
			t.Errorf("%s.Final()=%v, want %v", tt.s, got, tt.want)
		}
	}
	if got, want := len(ledger.States()), 8; got != want {
		t.Errorf("len(States())=%d, want %d", got, want)
	}
}

// TestKeptPayload: the ledger keeps what DPS returned only when it is a JSON
// object of at most 16 KB, compacted; anything else is "".
func TestKeptPayload(t *testing.T) {
	big := `{"blob":"` + strings.Repeat("x", ledger.MaxReturnedPayload-11) + `"}` // exactly the limit
	if len(big) != ledger.MaxReturnedPayload {
		t.Fatalf("test payload is %d bytes, want %d", len(big), ledger.MaxReturnedPayload)
	}
	for _, tt := range []struct {
		name, in, want string
	}{
		{"None", "", ""},
		{"Object", `{"line":3}`, `{"line":3}`},
		{"Compacted", "{ \"line\" : 3,\n  \"tags\": [ \"a\", \"b\" ] }", `{"line":3,"tags":["a","b"]}`},
		{"LeadingSpace", "  \n{\"a\":1}", `{"a":1}`},
		{"EmptyObject", `{}`, `{}`},
		{"Null", `null`, ""},
		{"Array", `[1,2]`, ""},
		{"String", `"text"`, ""},
		{"Number", `42`, ""},
		{"NotJSON", `{"a":`, ""},
		{"Trailing", `{"a":1} {"b":2}`, ""},
		{"AtLimit", big, big},
		{"OverLimit", `{"blob":"` + strings.Repeat("x", ledger.MaxReturnedPayload) + `"}`, ""},
		{"LimitAfterCompacting", "{\"blob\":   \"" + strings.Repeat("x", ledger.MaxReturnedPayload-11) + "\"}", big},
		{"HugeBody", `{"blob":"` + strings.Repeat("x", 96<<10) + `"}`, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := ledger.KeptPayload([]byte(tt.in))
			if got != tt.want {
				t.Errorf("KeptPayload(%.60q)=%.60q, want %.60q", tt.in, got, tt.want)
			}
		})
	}
}

// TestIssuedLostRoundTrip: issued-lost is stored as assigned with cert_lost
// set and read back as issued-lost, through Device, Each with a state
// filter, Briefs and Counts; an issued certificate's identity round-trips.
func TestIssuedLostRoundTrip(t *testing.T) {
	ctx := context.Background()
	l := MustOpen(t, tempPath(t), ledger.Options{})
	notAfter := time.Date(2027, 1, 2, 3, 4, 5, 678_000_000, time.UTC)
	MustPut(t, l, ledger.Device{RegistrationID: "ok", State: ledger.StateAssigned, AssignedHub: "hub-a",
		Issued: ledger.IssuedCert{Fingerprint: "sha256:ab", Serial: "0A1B", NotAfter: notAfter}})
	MustPut(t, l, ledger.Device{RegistrationID: "lost", State: ledger.StateIssuedLost, AssignedHub: "hub-a"})
	MustPut(t, l, ledger.Device{RegistrationID: "kept", State: ledger.StateAssigning, CSRSent: true, IssuedChain: "-----BEGIN CERTIFICATE-----\n..."})
	if d, _, err := l.Device(ctx, "kept"); err != nil || !d.CSRSent || !strings.HasPrefix(d.IssuedChain, "-----BEGIN CERTIFICATE") {
		t.Errorf("Device(kept)=%+v err=%v, want the CSR flag and the kept chain", d, err)
	}

	d, _, err := l.Device(ctx, "ok")
	if err != nil || d.State != ledger.StateAssigned || d.Issued.Serial != "0A1B" || !d.Issued.NotAfter.Equal(notAfter) {
		t.Errorf("Device(ok)=%+v err=%v", d, err)
	}
	d, _, err = l.Device(ctx, "lost")
	if err != nil || d.State != ledger.StateIssuedLost || !d.Issued.IsZero() {
		t.Errorf("Device(lost)=%+v err=%v, want issued-lost", d, err)
	}
	var got []string
	if err := l.Each(ctx, []ledger.State{ledger.StateIssuedLost}, func(d ledger.Device) error {
		got = append(got, d.RegistrationID)
		return nil
	}); err != nil || len(got) != 1 || got[0] != "lost" {
		t.Errorf("Each(issued-lost)=%v err=%v", got, err)
	}
	got = nil
	if err := l.Each(ctx, []ledger.State{ledger.StateAssigned}, func(d ledger.Device) error {
		got = append(got, d.RegistrationID)
		return nil
	}); err != nil || len(got) != 1 || got[0] != "ok" {
		t.Errorf("Each(assigned)=%v err=%v", got, err)
	}
	b, err := l.Briefs(ctx, []string{"ok", "lost"})
	if err != nil || b["lost"].State != ledger.StateIssuedLost || b["ok"].State != ledger.StateAssigned || !b["ok"].HasIssued || b["lost"].HasIssued {
		t.Errorf("Briefs=%+v err=%v", b, err)
	}
	c, err := l.Counts(ctx)
	if err != nil || c.ByState[ledger.StateIssuedLost] != 1 || c.ByState[ledger.StateAssigned] != 1 || c.ByState[ledger.StateAssigning] != 1 || c.ByHub["hub-a"] != 1 {
		t.Errorf("Counts=%+v err=%v", c, err)
	}
}
