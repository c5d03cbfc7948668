package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// interruptContext implements the two-signal shutdown: the first SIGINT or
// SIGTERM closes drain (stop dispatching, let in-flight work finish and be
// recorded); the second cancels ctx (stop now). stop releases the handler.
func interruptContext() (ctx context.Context, drain <-chan struct{}, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	drainCh := make(chan struct{})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		seen := 0
		for {
			select {
			case <-sigs:
				seen++
				if seen == 1 {
					close(drainCh)
				} else {
					cancel()
					return
				}
			case <-done:
				return
			}
		}
	}()
	var stopped bool
	return ctx, drainCh, func() {
		if stopped {
			return
		}
		stopped = true
		signal.Stop(sigs)
		close(done)
		cancel()
	}
}
