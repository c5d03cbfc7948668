package main

import "context"

// runSim is a placeholder until the command lands.
func runSim(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "sim", "The sim command (not in this build yet).", "dps-batch sim --help")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return usagef("dps-batch help", "the sim command is not available in this build yet")
}
