package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// Exit codes. They are part of the command-line contract and documented in README.md.
const (
	exitOK          = 0   // everything asked for was done
	exitInternal    = 1   // an unexpected error (I/O, ledger, network setup)
	exitUsage       = 2   // bad flags, bad arguments or a manifest that failed validation; nothing was sent
	exitDeviceFails = 3   // the run finished but some devices failed, were disabled or gave up
	exitResumable   = 4   // the run stopped with work left; run the same command again to resume
	exitBusy        = 5   // the ledger is in use by another run; nothing was sent; try again when it ends
	exitSystemic    = 6   // stopped early: the first devices all failed the same way (endpoint, ID scope, CA, group key); fix it and run again
	exitInterrupted = 130 // stopped by a second interrupt; the ledger is consistent, re-run to resume
)

// env is what a command may touch of the process: its streams, its
// environment and the drain signal (closed on the first SIGINT/SIGTERM).
type env struct {
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	// drain is closed when the user asks for a graceful stop; nil never closes.
	drain <-chan struct{}
}

// command is one dps-batch subcommand.
type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

// commands lists the subcommands in the order help shows them.
func commands() []command {
	return []command{
		{"demo", "Run the whole flow locally: test fleet, simulator, provisioning, report", runDemo},
		{"enroll", "Create the individual enrollments of a manifest's devices in DPS, in bulk", runEnroll},
		{"provision", "Provision the devices of a manifest, recording every step in a ledger", runProvision},
		{"status", "Show what a ledger holds and what re-running would do", runStatus},
		{"report", "Export one row per device from a ledger as CSV or JSON lines", runReport},
		{"enrollments", "Export every individual enrollment of a DPS instance", runEnrollments},
		{"deregister", "Delete the registration states (and enrollments) of a manifest's devices", runDeregister},
		{"certs", "Generate test certificates: root, intermediate, device, verification, fleet", runCerts},
		{"keys", "Derive the keys of a symmetric-key group's devices, to flash onto them", runKeys},
		{"sim", "Serve a local DPS simulator over HTTPS", runSim},
		{"version", "Print the version", runVersion},
		{"help", "Show help for a command", nil},
	}
}

// exitError carries a specific exit code with an optional message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

// usageError is a problem with how the command was called. It exits 2 and
// prints a one-line hint.
type usageError struct {
	msg  string
	hint string
}

func (e *usageError) Error() string { return e.msg }

func usagef(hint, format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), hint: hint}
}

// errHelpShown means --help was asked for and printed: exit 0.
var errHelpShown = errors.New("help shown")

// run is the process policy: it picks the command, maps errors to exit codes
// and prints the final error. Tests call it in-process.
func run(ctx context.Context, args []string, e *env) int {
	if e.getenv == nil {
		e.getenv = func(string) string { return "" }
	}
	if len(args) == 0 {
		printMainUsage(e.stderr)
		return exitUsage
	}
	name, rest := args[0], args[1:]
	switch name {
	case "-h", "-help", "--help":
		printMainUsage(e.stdout)
		return exitOK
	case "-version", "--version":
		name = "version"
	case "help":
		if len(rest) == 0 {
			printMainUsage(e.stdout)
			return exitOK
		}
		name, rest = rest[0], []string{"--help"}
	}
	for _, c := range commands() {
		if c.name != name || c.run == nil {
			continue
		}
		return exitCode(e.stderr, name, c.run(ctx, e, rest))
	}
	fmt.Fprintf(e.stderr, "dps-batch: unknown command %q\nTry: dps-batch help\n", name)
	return exitUsage
}

// exitCode prints err (if any) and returns the exit code for it.
func exitCode(stderr io.Writer, name string, err error) int {
	if err == nil || errors.Is(err, errHelpShown) {
		return exitOK
	}
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "dps-batch %s: %s\n", name, ue.msg)
		hint := ue.hint
		if hint == "" {
			hint = "dps-batch " + name + " --help"
		}
		fmt.Fprintf(stderr, "Try: %s\n", hint)
		return exitUsage
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintf(stderr, "dps-batch %s: %s\n", name, ee.err)
		}
		return ee.code
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "dps-batch %s: interrupted\n", name)
		return exitInterrupted
	}
	fmt.Fprintf(stderr, "dps-batch %s: %s\n", name, err)
	return exitInternal
}

func printMainUsage(w io.Writer) {
	fmt.Fprintf(w, `dps-batch provisions fleets of IoT devices through Azure IoT Hub Device
Provisioning Service (DPS): concurrently, within DPS quotas, resumably.

Usage:
  dps-batch <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, `
Run "dps-batch <command> --help" for a command's flags and examples.

Quick start (everything local, no cloud account):
  dps-batch demo
`)
}

func runVersion(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "version", "Print the version of dps-batch.", "dps-batch version")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "dps-batch %s\n", version)
	return nil
}

// newFlagSet returns a FlagSet whose help prints the purpose, the flags with
// their defaults and the examples.
func newFlagSet(e *env, name, purpose string, examples ...string) *flag.FlagSet {
	fs := flag.NewFlagSet("dps-batch "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		w := e.stdout
		fmt.Fprintf(w, "%s\n\nUsage:\n  dps-batch %s [flags]\n\nFlags:\n", purpose, name)
		fs.SetOutput(w)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
		if len(examples) > 0 {
			fmt.Fprintf(w, "\nExamples:\n")
			for _, ex := range examples {
				fmt.Fprintf(w, "  %s\n", strings.ReplaceAll(ex, "\n", "\n  "))
			}
		}
	}
	return fs
}

// parseFlags parses args, turning -h into errHelpShown and flag errors into
// usage errors. Positional arguments are refused: every input is a flag.
func parseFlags(fs *flag.FlagSet, args []string) error {
	// The flag package prints usage itself on -h and on every error; silence
	// it so help shows once, and only when asked for.
	usage := fs.Usage
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.Usage = usage
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage()
			return errHelpShown
		}
		return usagef(fs.Name()+" --help", "%s", err)
	}
	if fs.NArg() > 0 {
		return usagef(fs.Name()+" --help", "unexpected argument %q (every input is a flag)", fs.Arg(0))
	}
	return nil
}

// requireFlag returns a usage error when value is empty.
func requireFlag(fs *flag.FlagSet, name, value, example string) error {
	if strings.TrimSpace(value) == "" {
		return usagef(example, "--%s is required", name)
	}
	return nil
}
