package main

import "context"

// runReport is a placeholder until the command lands.
func runReport(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "report", "The report command (not in this build yet).", "dps-batch report --help")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return usagef("dps-batch help", "the report command is not available in this build yet")
}
