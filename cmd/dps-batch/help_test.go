package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite the help golden files in testdata/help")

// TestHelpGolden keeps every command's --help under review: a change to
// flags, defaults or examples shows up as a diff of testdata/help/*.golden
// (make golden rewrites them after an intended change).
func TestHelpGolden(t *testing.T) {
	cmds := [][]string{{"help"}}
	for _, c := range commands() {
		if c.run != nil {
			cmds = append(cmds, []string{c.name, "--help"})
		}
	}
	for _, sub := range []string{"root", "intermediate", "device", "verification", "fleet", "csr"} {
		cmds = append(cmds, []string{"certs", sub, "--help"})
	}
	for _, args := range cmds {
		name := strings.Join(args, "_")
		name = strings.TrimSuffix(strings.ReplaceAll(name, "--help", ""), "_")
		t.Run(name, func(t *testing.T) {
			code, out, errs := runCmd(t, args...)
			if code != exitOK {
				t.Fatalf("%v: exit %d, stderr %q", args, code, errs)
			}
			path := filepath.Join("testdata", "help", name+".golden")
			if *updateGolden {
				if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (go test ./cmd/dps-batch -run Golden -update creates it)", err)
			}
			if out != string(want) {
				t.Errorf("%v --help differs from %s (make golden rewrites it after an intended change)\ngot:\n%s", args, path, out)
			}
		})
	}
}
