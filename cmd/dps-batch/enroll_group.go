package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dpsservice"
	"github.com/dps-batch/dps-batch/manifests"
)

const enrollGroupPurpose = `Create an enrollment group through the DPS service API, so a fleet made with
"dps-batch certs fleet" (or any fleet sharing a CA or a group key) can be set up
without the portal. One of:

  --ca-cert FILE       an X.509 group whose CA (root or intermediate, PEM) is
                       uploaded to the group itself (signingCertificates)
  --ca-ref NAME        an X.509 group on a CA certificate uploaded and verified
                       on the DPS instance under NAME (caReferences)
  --symmetric --key-out FILE
                       a symmetric-key group; its primary key is written to FILE
                       (base64 on one line, mode 0600), the file provision's
                       --group-key-file and "keys derive" read. An existing FILE
                       is used as the key instead of a new one, so running the
                       command again changes nothing.

The group is created with a bulk create, which DPS refuses for an existing id:
an existing group is read and compared, "exists, same" when it has the asked-for
attestation (exit 0), a failure when not (exit 3) unless --update, which replaces
it (by etag: a change made meanwhile is not overwritten). Service credentials as
for enroll.`

func runEnrollGroup(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "enroll group", enrollGroupPurpose,
		"dps-batch enroll group --id line3 --ca-cert fleet/ca/intermediate.pem",
		"dps-batch enroll group --id line3 --ca-ref line3-intermediate --iot-hub line3-hub.azure-devices.net",
		"dps-batch enroll group --id sensors --symmetric --key-out sensors/group.key",
		"# against a local simulator (dps-batch sim writes its connection string to sim-service.conn):\nDPS_SERVICE_CONNECTION_STRING=\"$(cat sim-service.conn)\" \\\n    dps-batch enroll group --id fleet --ca-cert fleet/ca/intermediate.pem --ca-file sim-ca.pem")
	var (
		f          enrollFlags // the enrollment option flags and the service flags
		id         string
		caCert     string
		caRef      string
		symmetric  bool
		keyOut     string
		update     bool
		jsonOutput bool
	)
	fs.StringVar(&id, "id", "", "enrollment group `id`; required")
	fs.StringVar(&caCert, "ca-cert", "", "X.509 group: the CA certificate `file` (PEM: root or intermediate) uploaded to the group")
	fs.StringVar(&caRef, "ca-ref", "", "X.509 group: the `name` of a verified CA certificate of the DPS instance")
	fs.BoolVar(&symmetric, "symmetric", false, "symmetric-key group; needs --key-out")
	fs.StringVar(&keyOut, "key-out", "", "with --symmetric: `file` for the group's primary key (mode 0600); an existing one is used as the key")
	fs.BoolVar(&update, "update", false, "replace an existing group with another attestation or settings (by etag)")
	fs.StringVar(&f.provisioningStatus, "provisioning-status", "", "provisioningStatus of the group: `enabled` or disabled (default: DPS's, enabled)")
	fs.Var(&f.iotHubs, "iot-hub", "IoT `hub` host name the group's devices may be assigned to; repeatable (default: every linked hub)")
	fs.StringVar(&f.allocationPolicy, "allocation-policy", "", "allocationPolicy of the group: `hashed`, geoLatency or static")
	fs.StringVar(&f.initialTwinFile, "initial-twin", "", "JSON `file` with the initial device twin: {\"tags\": {...}, \"properties\": {\"desired\": {...}}}")
	fs.BoolVar(&f.iotEdge, "iot-edge", false, "mark the group's devices as IoT Edge devices")
	registerCredentialPolicy(fs, &f.credentialPolicy, "the group")
	fs.BoolVar(&jsonOutput, "json", false, "print the outcome as JSON on stdout")
	f.svc.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	const example = "dps-batch enroll group --id line3 --ca-cert fleet/ca/intermediate.pem"
	if err := requireFlag(fs, "id", id, example); err != nil {
		return err
	}
	kinds := 0
	for _, set := range []bool{caCert != "", caRef != "", symmetric} {
		if set {
			kinds++
		}
	}
	if kinds != 1 {
		return usagef(example+", or --ca-ref NAME, or --symmetric --key-out FILE", "give exactly one of --ca-cert, --ca-ref and --symmetric")
	}
	if symmetric != (keyOut != "") {
		return usagef("dps-batch enroll group --id sensors --symmetric --key-out sensors/group.key", "--symmetric and --key-out go together: the group key must be kept somewhere")
	}
	// The checks enroll makes of the shared option flags.
	f.manifest, f.mode, f.workers, f.maxAttempts, f.batchSize, f.rate = "-", "create", 1, 1, 1, 1
	if err := f.check(); err != nil {
		return err
	}
	tpl, err := f.template()
	if err != nil {
		return err
	}
	g := dpsservice.EnrollmentGroup{
		EnrollmentGroupID:    id,
		ProvisioningStatus:   tpl.ProvisioningStatus,
		AllocationPolicy:     tpl.AllocationPolicy,
		IoTHubs:              tpl.IoTHubs,
		InitialTwin:          tpl.InitialTwin,
		Capabilities:         tpl.Capabilities,
		CredentialPolicyName: tpl.CredentialPolicyName,
	}
	switch {
	case caCert != "":
		b, err := os.ReadFile(caCert)
		if err != nil {
			return usagef("--ca-cert FILE: the PEM CA certificate, e.g. fleet/ca/intermediate.pem", "read --ca-cert: %v", unwrapPath(err))
		}
		cs, err := certs.ParseCertsPEM(b)
		if err != nil || len(cs) == 0 {
			return usagef("--ca-cert FILE: the PEM CA certificate, e.g. fleet/ca/intermediate.pem", "--ca-cert %s: not a PEM certificate", caCert)
		}
		if !cs[0].IsCA {
			return usagef("give the CA that issued the device certificates (root or intermediate), not a device certificate", "--ca-cert %s: %q is not a CA certificate", caCert, cs[0].Subject.CommonName)
		}
		g.Attestation = dpsservice.X509SigningAttestation(cs[0])
	case caRef != "":
		g.Attestation = dpsservice.X509CAReferenceAttestation(caRef)
	default:
		key, fresh, err := groupKeyFor(keyOut)
		if err != nil {
			return err
		}
		g.Attestation = dpsservice.SymmetricKeyAttestationOf(key, "")
		if fresh {
			// Written before the request: a crash after it leaves the key
			// the group was created with.
			if err := certs.WriteSecretFile(keyOut, []byte(key+"\n"), false); err != nil {
				return fmt.Errorf("write --key-out: %w", err)
			}
		}
	}
	client, err := f.svc.client(e, "enroll group")
	if err != nil {
		return err
	}
	defer client.Close()
	res, err := batch.EnrollGroup(ctx, client, g, batch.GroupOptions{Update: update})
	if err != nil {
		if dpsservice.Classify(err) == dpsservice.Fatal {
			return serviceStop(e, "enroll group", &batch.EnrollStopError{Err: err, Hint: dpsservice.Hint(err)})
		}
		msg := err.Error()
		if h := dpsservice.Hint(err); h != "" {
			msg += "\nhint: " + h
		}
		code := exitDeviceFails
		if dpsservice.Classify(err) == dpsservice.Retryable {
			code = exitResumable
		}
		return &exitError{code: code, err: errors.New(msg)}
	}
	kind := g.Attestation.Type
	if jsonOutput {
		out := map[string]any{"enrollmentGroupId": id, "outcome": res.Outcome, "attestation": kind}
		if res.Why != "" {
			out["difference"] = res.Why
		}
		if keyOut != "" {
			out["keyFile"] = keyOut
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
	} else {
		switch res.Outcome {
		case batch.GroupCreated:
			fmt.Fprintf(e.stdout, "Enrollment group %s created (%s) at %s\n", id, kind, client.Host())
		case batch.GroupUpdated:
			fmt.Fprintf(e.stdout, "Enrollment group %s replaced (%s) at %s\n", id, kind, client.Host())
		case batch.GroupExistsSame:
			fmt.Fprintf(e.stdout, "Enrollment group %s exists already with the same attestation: left as it is\n", id)
		case batch.GroupExistsDifferent:
			fmt.Fprintf(e.stdout, "Enrollment group %s exists with another attestation (%s): not changed; --update replaces it\n", id, res.Why)
		}
		if keyOut != "" && res.Outcome != batch.GroupExistsDifferent {
			fmt.Fprintf(e.stdout, "Group key: %s (mode 0600). Device keys: dps-batch keys derive --manifest MANIFEST --group-key-file %s --out device-keys.csv\n", keyOut, shellQuote(keyOut))
		}
	}
	if res.Outcome == batch.GroupExistsDifferent {
		return &exitError{code: exitDeviceFails}
	}
	return nil
}

// groupKeyFor returns the key in path if it exists (fresh false), or a new
// random 64-byte key (DPS's group key size).
func groupKeyFor(path string) (key string, fresh bool, err error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		k := strings.TrimSpace(string(b))
		if _, derr := manifests.DecodeKey(k); derr != nil {
			return "", false, usagef("name a new --key-out file, or one holding the group's base64 key", "--key-out %s exists but does not hold a base64 key: %v", path, derr)
		}
		return k, false, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", false, usagef("check the --key-out path", "read --key-out: %v", unwrapPath(err))
	}
	raw := make([]byte, 64)
	_, _ = rand.Read(raw)
	return base64.StdEncoding.EncodeToString(raw), true, nil
}
