package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// runCmd runs the CLI in-process and returns the exit code and both streams.
func runCmd(t testing.TB, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb})
	return code, out.String(), errb.String()
}

func TestRunUsage(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{"no args", nil, exitUsage, "", "Usage:"},
		{"help", []string{"help"}, exitOK, "Commands:", ""},
		{"unknown", []string{"frobnicate"}, exitUsage, "", `unknown command "frobnicate"`},
		{"version", []string{"version"}, exitOK, "dps-batch dev", ""},
		{"--version", []string{"--version"}, exitOK, "dps-batch dev", ""},
		{"version bad flag", []string{"version", "--nope"}, exitUsage, "", "Try:"},
		{"version positional", []string{"version", "extra"}, exitUsage, "", "unexpected argument"},
		{"help version", []string{"help", "version"}, exitOK, "Print the version", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runCmd(t, tt.args...)
			if code != tt.wantCode {
				t.Errorf("exit code = %d, want %d (stderr %q)", code, tt.wantCode, errs)
			}
			if !strings.Contains(out, tt.wantOut) {
				t.Errorf("stdout = %q, want it to contain %q", out, tt.wantOut)
			}
			if !strings.Contains(errs, tt.wantErr) {
				t.Errorf("stderr = %q, want it to contain %q", errs, tt.wantErr)
			}
		})
	}
}

// TestEveryCommandHasHelp checks each command answers --help with exit 0,
// flags and at least one example.
func TestEveryCommandHasHelp(t *testing.T) {
	for _, c := range commands() {
		if c.run == nil {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			code, out, errs := runCmd(t, c.name, "--help")
			if code != exitOK {
				t.Fatalf("%s --help exit = %d, stderr %q", c.name, code, errs)
			}
			if !strings.Contains(out, "Example") {
				t.Errorf("%s --help has no examples:\n%s", c.name, out)
			}
		})
	}
}
