//go:build !linux

package main

// watchPeakRSS is not available here; the child's rusage is used instead.
func watchPeakRSS(pid int, stop <-chan struct{}) func() int64 { return nil }
