package batch

import (
	"context"
	"log/slog"
	"sync"
)

// halter lets any device stop its run from inside: like a drain (no new
// device, no new request that would start something at DPS; requests in
// flight complete and are recorded), with the first error given kept for
// Run to return. Both runners use it.
type halter struct {
	ch   chan struct{} // closed by halt
	once sync.Once
	mu   sync.Mutex
	err  error
}

func newHalter() *halter { return &halter{ch: make(chan struct{})} }

// halt records err (the first one wins) and stops the run.
func (h *halter) halt(err error) {
	h.mu.Lock()
	if h.err == nil {
		h.err = err
	}
	h.mu.Unlock()
	h.once.Do(func() { close(h.ch) })
}

// Err is why the run was halted; nil if it was not.
func (h *halter) Err() error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// stopOn returns a channel closed when the user asks to stop (drain) or the
// run is halted, calling onStop first; stopWatching ends the watch when the
// run is over.
func stopOn(ctx context.Context, drain <-chan struct{}, h *halter, onStop func()) (stop <-chan struct{}, stopWatching func()) {
	ch := make(chan struct{})
	watchCtx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-drain:
		case <-h.ch:
		case <-watchCtx.Done():
			return
		}
		onStop()
		close(ch)
	}()
	return ch, cancel
}

// warnsPerKind is how many warnings of one kind a run prints; the rest are
// counted and summed up once at the end (every device's detail is in the
// ledger and the report).
const warnsPerKind = 3

// warnLimiter holds back repeated warnings of one kind.
type warnLimiter struct {
	mu     sync.Mutex
	warned map[string]int
}

// warn logs a warning unless warnsPerKind of the same kind were logged.
func (w *warnLimiter) warn(log *slog.Logger, kind, msg string, args ...any) {
	w.mu.Lock()
	if w.warned == nil {
		w.warned = map[string]int{}
	}
	w.warned[kind]++
	n := w.warned[kind]
	w.mu.Unlock()
	if n <= warnsPerKind {
		log.Warn(msg, args...)
	}
}

// flush logs, once per kind, how many warnings were held back, with more
// as the message, and starts over.
func (w *warnLimiter) flush(log *slog.Logger, more string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for kind, n := range w.warned {
		if n > warnsPerKind {
			log.Warn(more, "count", n-warnsPerKind, "like", kind)
		}
	}
	w.warned = nil
}
