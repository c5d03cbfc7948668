// Package simtrace holds what the crash-loop and fault-soak tests judge a
// run by. It is test support: only tests import it.
//
// The oracle is server-side: how many registrations took effect at the
// simulator per device (dpssim.RegistrationInfo.Registers, and
// RegisterTimes for when each did), split at the boundaries of a test's
// phases (first provisioning, each re-registration campaign) with
// PerWindow. That count includes PUTs whose answer the client never saw
// (dropped, cut short, late, or sent by a process that was then killed),
// so it cannot be fooled by what the client believes.
//
// The per-device request histories (FromRecord, RePUTs) are the client-side
// view, kept as a diagnostic: they say which request pattern led to a
// wasted registration, but they judge from what the client could see and
// so both miss registrations (a late effect) and flag harmless PUTs (one
// after a lookup showed yesterday's record).
package simtrace

import (
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"
)

// Event is one device request as the simulator answered it.
type Event struct {
	Kind   string    // register, poll or lookup (the log record's message)
	Status int       // HTTP status; 0 = connection dropped or answer lost
	At     time.Time // when the simulator logged it (zero when not known)
}

// FromRecord decodes one line of the simulator's request log (dpssim.Server
// Logger): the registration id, lower-cased, and the request.
func FromRecord(r slog.Record) (id string, ev Event) {
	ev.Kind = r.Message
	ev.At = r.Time
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "device":
			id = strings.ToLower(a.Value.String())
		case "status":
			if a.Value.Kind() == slog.KindInt64 {
				ev.Status = int(a.Value.Int64())
			}
		}
		return true
	})
	return id, ev
}

// PerWindow splits the times at which a device's registrations took effect
// (dpssim.RegistrationInfo.RegisterTimes) into the windows that starts
// opens: window i is [starts[i], starts[i+1]), the last one has no end.
// starts must be in increasing order; registrations before starts[0] are
// returned as before. This is the oracle of "at most once per campaign":
// give it the instants each phase of a test began.
func PerWindow(times []time.Time, starts []time.Time) (counts []int, before int) {
	counts = make([]int, len(starts))
	for _, t := range times {
		i := sort.Search(len(starts), func(i int) bool { return starts[i].After(t) }) - 1
		if i < 0 {
			before++
			continue
		}
		counts[i]++
	}
	return counts, before
}

// Since returns the events of a history logged at or after t.
func Since(history []Event, t time.Time) []Event {
	var out []Event
	for _, e := range history {
		if !e.At.Before(t) {
			out = append(out, e)
		}
	}
	return out
}

// RePUTs counts the register PUTs in a device's history that were sent while
// DPS already had, or might have had, a registration operation for it: after
// a register that started an operation (2xx), was refused because one was in
// progress (409) or lost its answer (0: it may have taken effect), or after a
// poll or lookup answered 2xx, unless a lookup answered 404 since (DPS said
// it has nothing).
//
// It is a diagnostic of the client's request pattern, not the oracle (see
// the package documentation): a PUT after a lookup that showed the record
// of an earlier registration is counted, though a campaign sends exactly
// that; a PUT that took effect late, with no answer logged, is not seen.
func RePUTs(history []Event) int {
	known, n := false, 0
	for _, e := range history {
		ok := e.Status >= 200 && e.Status < 300
		switch e.Kind {
		case "register":
			if known {
				n++
			}
			if ok || e.Status == 0 || e.Status == http.StatusConflict {
				known = true
			}
		case "lookup":
			if e.Status == http.StatusNotFound {
				known = false
			} else if ok {
				known = true
			}
		case "poll":
			if ok {
				known = true
			}
		}
	}
	return n
}

// Count counts the requests of one kind in a history.
func Count(history []Event, kind string) int {
	n := 0
	for _, e := range history {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

// Issued is the server-side oracle of certificates issued at registration
// for one device, as the simulator reports it (dpssim.RegistrationInfo
// CertificatesIssued, ChainsDelivered; /_sim/registrations
// "certificatesIssued", "chainsDelivered").
type Issued struct {
	Issued    int // certificates issued, whatever the client saw
	Delivered int // answers carrying an issued chain that were written
}

// Judge checks a device's end state as the client recorded it against the
// oracle: hasChain says the client kept an issued chain, lost that it marked
// the device's certificate lost. It returns "" when they agree, else why
// not. A chain needs a delivered answer; an issued certificate needs either
// a chain or the lost mark (the status lookup never returns the chain); a
// lost mark with a delivered chain is allowed (the process may have died
// before the chain was durable).
func (x Issued) Judge(hasChain, lost bool) string {
	switch {
	case hasChain && lost:
		return "the device has a chain and is marked lost"
	case hasChain && x.Delivered == 0:
		return fmt.Sprintf("the device has a chain, but the server delivered none (%d issued)", x.Issued)
	case !hasChain && !lost && x.Issued > 0:
		return fmt.Sprintf("the server issued %d certificate(s) (%d delivered), but the device has no chain and is not marked lost", x.Issued, x.Delivered)
	}
	return ""
}
