package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestServiceSubcommandHelpGolden keeps the --help of the service API
// subcommands under review, like TestHelpGolden does for the commands.
func TestServiceSubcommandHelpGolden(t *testing.T) {
	for _, args := range [][]string{{"enroll", "group", "--help"}, {"enrollments", "export", "--help"}} {
		name := strings.Join(args[:len(args)-1], "_")
		t.Run(name, func(t *testing.T) {
			code, out, errs := runCmd(t, args...)
			if code != exitOK {
				t.Fatalf("%v: exit %d, stderr %q", args, code, errs)
			}
			if !strings.Contains(out, "Examples:") {
				t.Errorf("%v has no examples", args)
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
				t.Errorf("%v differs from %s (make golden rewrites it after an intended change)\ngot:\n%s", args, path, out)
			}
		})
	}
}
