// Command dps-batch provisions fleets of devices through the Azure IoT Hub
// Device Provisioning Service: concurrently, rate-limited, resumable from a
// SQLite ledger, with CSV reports, a local DPS simulator and test PKI.
//
// main only wires the process to run; see run.go for the process policy.
package main

import (
	"os"
)

func main() {
	ctx, drain, stop := interruptContext()
	defer stop()
	code := run(ctx, os.Args[1:], &env{
		stdin:  os.Stdin,
		stdout: os.Stdout,
		stderr: os.Stderr,
		getenv: os.Getenv,
		drain:  drain,
	})
	stop()
	os.Exit(code)
}
