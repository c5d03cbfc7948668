package main

import "errors"

// writeFleetSimConfig writes DIR/sim.json: a simulator configuration for a
// fleet made by "certs fleet" — the given ID scope and one X.509 enrollment
// group whose CA (caCertPEM, the fleet's root or intermediate) is verified.
// It returns the path written. (Placeholder until the simulator lands.)
func writeFleetSimConfig(dir, idScope string, caCertPEM []byte, force bool) (string, error) {
	return "", errors.New("simulator configuration is not available in this build yet")
}
