package main

import (
	"path/filepath"

	"github.com/dps-batch/dps-batch/dpssim"
)

// writeFleetSimConfig writes DIR/sim.json: a simulator configuration for a
// fleet made by "certs fleet" — the given ID scope and one X.509 enrollment
// group whose CA (caCertPEM, the fleet's root or intermediate) is uploaded
// and verified, so "dps-batch sim --config DIR/sim.json" accepts every
// device of the fleet. An existing file is replaced only when force is set.
// It returns the path written.
func writeFleetSimConfig(dir, idScope string, caCertPEM []byte, force bool) (string, error) {
	path := filepath.Join(dir, "sim.json")
	if err := dpssim.WriteConfig(path, dpssim.FleetConfig(idScope, caCertPEM), force); err != nil {
		return "", err
	}
	return path, nil
}
