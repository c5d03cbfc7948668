// Package simtrace turns the simulator's request log into per-device request
// histories, and holds the one definition of a wasted registration that the
// crash-loop and fault-soak tests assert is never made. It is test support:
// only tests import it.
package simtrace

import (
	"log/slog"
	"net/http"
	"strings"
)

// Event is one device request as the simulator answered it.
type Event struct {
	Kind   string // register, poll or lookup (the log record's message)
	Status int    // HTTP status; 0 = connection dropped or answer lost
}

// FromRecord decodes one line of the simulator's request log (dpssim.Server
// Logger): the registration id, lower-cased, and the request.
func FromRecord(r slog.Record) (id string, ev Event) {
	ev.Kind = r.Message
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

// RePUTs counts the register PUTs in a device's history that were sent while
// DPS already had, or might have had, a registration operation for it: after
// a register that started an operation (2xx), was refused because one was in
// progress (409) or lost its answer (0: it may have taken effect), or after a
// poll or lookup answered 2xx, unless a lookup answered 404 since (DPS said
// it has nothing). dps-batch promises this is zero: an uncertain device is
// looked up (not billable) before it is registered again.
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
