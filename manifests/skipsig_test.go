package manifests

import (
	"testing"

	"github.com/dps-batch/dps-batch/certs"
)

// TestSkipSignatureChecks: a chain whose names line up but whose signature
// is wrong (an impostor intermediate with the real one's name) fails a
// normal load and loads when the signature checks are skipped, which the
// runner does only for the second pass of a manifest it has validated.
func TestSkipSignatureChecks(t *testing.T) {
	dir := t.TempDir()
	root, err := certs.NewRoot("root", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.NewIntermediate("intermediate", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	impostor, err := root.NewIntermediate("intermediate", certs.Options{}) // same name, other key
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := inter.NewDevice("dev-1", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := certs.WriteLeaf(dir, leaf, "dev-1", false, false); err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteCertFile(dir+"/impostor.pem", false, impostor.Cert); err != nil {
		t.Fatal(err)
	}
	const hdr = "registration_id,cert_path,key_path,chain_path"
	line := "dev-1,dev-1.pem,dev-1.key,impostor.pem"

	if dev, probs := loadRow(t, dir, hdr, line, Options{}); dev != nil || len(probs) == 0 {
		t.Fatalf("normal load of a forged chain: device %v, problems%s; want an error", dev, problemStrings(probs))
	}
	dev, probs := loadRow(t, dir, hdr, line, Options{SkipSignatureChecks: true})
	if dev == nil {
		t.Fatalf("load with SkipSignatureChecks: problems%s; want the device", problemStrings(probs))
	}
	if got := len(dev.Certificate.Certificate); got != 2 {
		t.Errorf("chain length %d, want 2", got)
	}
}
