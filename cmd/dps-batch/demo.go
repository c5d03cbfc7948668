package main

import "context"

// runDemo is a placeholder until the command lands.
func runDemo(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "demo", "The demo command (not in this build yet).", "dps-batch demo --help")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return usagef("dps-batch help", "the demo command is not available in this build yet")
}
