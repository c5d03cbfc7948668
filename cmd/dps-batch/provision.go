package main

import "context"

// runProvision is a placeholder until the command lands.
func runProvision(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "provision", "The provision command (not in this build yet).", "dps-batch provision --help")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return usagef("dps-batch help", "the provision command is not available in this build yet")
}
