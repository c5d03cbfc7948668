package main

import "context"

// runStatus is a placeholder until the command lands.
func runStatus(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "status", "The status command (not in this build yet).", "dps-batch status --help")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return usagef("dps-batch help", "the status command is not available in this build yet")
}
