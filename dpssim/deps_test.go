package dpssim

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDependencies keeps the package's arrows pointing one way: the
// simulator uses dps for wire types and certs for its server CA, and never
// the batch runner, the ledger or manifests.
func TestDependencies(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not on PATH")
	}
	out, err := exec.Command(gobin, "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const module = "github.com/dps-batch/dps-batch/"
	allowed := map[string]bool{module + "dps": true, module + "certs": true, module + "dpssim": true}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.HasPrefix(pkg, module) && !allowed[pkg] {
			t.Errorf("dpssim depends on %s; it may use only dps (wire types) and certs", pkg)
		}
	}
}
