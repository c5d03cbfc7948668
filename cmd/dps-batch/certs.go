package main

import "context"

// runCerts is a placeholder until the command lands.
func runCerts(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "certs", "The certs command (not in this build yet).", "dps-batch certs --help")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return usagef("dps-batch help", "the certs command is not available in this build yet")
}
