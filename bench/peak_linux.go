package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// watchPeakRSS samples the high-water mark of a running process's resident
// set (VmHWM in /proc/PID/status) until stop is closed, and returns a
// function giving the largest value seen, in bytes (0 if none).
//
// rusage's ru_maxrss cannot be used for a child on Linux: a child made by
// fork or vfork inherits its parent's high-water mark when it execs, so it
// would report the harness's own peak whenever that is larger.
func watchPeakRSS(pid int, stop <-chan struct{}) func() int64 {
	var peak atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if kb, ok := vmHWM(pid); ok && kb*1024 > peak.Load() {
				peak.Store(kb * 1024)
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	return func() int64 {
		<-done
		return peak.Load()
	}
}

// vmHWM reads VmHWM, in KiB, from /proc/PID/status.
func vmHWM(pid int) (int64, bool) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err == nil {
				return kb, true
			}
		}
	}
	return 0, false
}
