package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dpssim"
)

const simPurpose = `Serve a local DPS simulator over HTTPS: the DPS device API (register, operation
status, registration status lookup) for the enrollments in a JSON config, with
X.509 and SAS attestation checked like DPS, asynchronous assignment, quotas
(429 + Retry-After) and fault injection. Only loopback addresses are served.

The same port serves the DPS service API (api-version 2021-10-01): individual
enrollments and enrollment groups (GET/PUT/DELETE, bulk of at most 10, paged
query), registration states (GET/DELETE, query by group). Enrollments created
through it are what devices attest against at once, so a config without
enrollments works with "dps-batch enroll". It takes service SAS tokens of the
config's servicePolicies (rights enforced) or bearer tokens of its entraIssuers.
A config without servicePolicies gets a provisioningserviceowner policy whose
connection string is written (0600) to --service-connection-string-out,
default sim-service.conn next to the config, and reused on the next start.

The simulator's server certificate is issued by its own CA. The CA certificate
is written to --ca-out (default: sim-ca.pem next to the config, with its key in
sim-ca.key) and reused on the next start; clients must trust it (dps-batch
provision --ca-file, curl --cacert). Client certificates are requested, not
required: symmetric-key devices send none.

Inspection and admin endpoints (no client certificate needed):
  GET  /_sim/registrations, /_sim/registrations/{id}, /_sim/stats, /_sim/knobs
  PUT  /_sim/knobs                  e.g. {"faults":{"registerErrorRate":0.2}}
  POST /_sim/hold, /_sim/release    hold register requests / let them go
  GET  /_sim/certificates           CA certificates, verified or not
  POST /_sim/certificates/{name}/verificationCode
  POST /_sim/certificates/{name}/verify   (body: the verification certificate PEM)
  GET  /_sim/enrollments, /_sim/enrollments/{id}   creates, updates, deletes per id
  GET  /_sim/enrollmentGroups, /_sim/servicePolicies

Proof of possession (verify a CA certificate, as in the DPS portal):
  dps-batch sim verification-code --config FILE --ca NAME   print the code
  dps-batch certs verification --code CODE ...              make the certificate
  dps-batch sim verify --config FILE --ca NAME --cert FILE  mark it verified in FILE
  (or POST the certificate to /_sim/certificates/{name}/verify on a running simulator)

DPS leaves some behaviour undocumented; flags make each possibility testable:
register PUTs that take effect late, even for a client that has given up
(--late-effect-*), unusable 2xx register answers after the PUT took effect
(--register-bad-body*), what the status lookup shows while an operation runs
(--lookup-while-assigning) and bare 404s as from a proxy (--lookup-bare-404-rate).
The config's "registrations" are devices that registered before the simulator
started: the lookup finds them, /_sim/ does not count them as registers.

Flags below that change quotas and faults override the config file.
The first Ctrl-C (SIGINT/SIGTERM) stops the simulator cleanly.`

var simExamples = []string{
	`dps-batch certs fleet --count 100 --out ./fleet
dps-batch sim --config ./fleet/sim.json --listen 127.0.0.1:8443`,
	`dps-batch sim --config sim.json --listen 127.0.0.1:0        # pick a free port; the URL is printed`,
	`dps-batch sim --config sim.json --registrations-per-minute 200 --register-error-rate 0.05 --fault-seed 7`,
	`# Register PUTs that take effect 40 s after they arrive, answered 1 s later if the client still waits:
dps-batch sim --config sim.json --late-effect-rate 0.3 --late-effect-delay 40s --late-answer-delay 1s --lookup-while-assigning notFound`,
	`# A curl session against it (the DPS REST calls, X.509 device dev-00001 of the fleet):
curl -i -X PUT --cacert ./fleet/sim-ca.pem \
  --cert ./fleet/devices/dev-00001.pem --key ./fleet/devices/dev-00001.key \
  -H 'Content-Type: application/json' -H 'Content-Encoding: utf-8' \
  -d '{"registrationId": "dev-00001"}' \
  'https://127.0.0.1:8443/0ne00000000/registrations/dev-00001/register?api-version=2019-03-31'
# → 202 {"operationId":"4.…","status":"assigning"}; then poll with the operationId:
curl -i --cacert ./fleet/sim-ca.pem \
  --cert ./fleet/devices/dev-00001.pem --key ./fleet/devices/dev-00001.key \
  'https://127.0.0.1:8443/0ne00000000/registrations/dev-00001/operations/OPERATION_ID?api-version=2019-03-31'
curl --cacert ./fleet/sim-ca.pem https://127.0.0.1:8443/_sim/registrations`,
	`dps-batch sim verification-code --config sim.json --ca my-root`,
	`# The service API: enrollments through the simulator, 200 service operations a minute:
dps-batch sim --config sim.json --service-operations-per-minute 200 --service-connection-string-out ./service.conn
export DPS_SERVICE_CONNECTION_STRING="$(cat ./service.conn)"
curl --cacert sim-ca.pem https://127.0.0.1:8443/_sim/enrollments`,
}

// runSim dispatches "dps-batch sim" and its proof-of-possession helpers.
func runSim(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "verification-code":
			return runSimVerificationCode(e, args[1:])
		case "verify":
			return runSimVerify(e, args[1:])
		}
	}
	return runSimServe(ctx, e, args)
}

// knobFlags are the command-line overrides of the config's quotas and faults.
type knobFlags struct {
	fs                                      *flag.FlagSet
	regsPerMinute, regBurst, pollsPer10s    *int
	retryAfter                              *int
	stayAssigning                           *int
	seed                                    *int64
	regErr, pollErr, lookupErr, drop, dropR *float64
	latency, jitter, assignDelay            *time.Duration
	lateRate, bare404, badBodyRate          *float64
	lateFirstPuts                           *int
	lateDelay, lateAnswer                   *time.Duration
	lookupWhileAssigning, badBody           *string
	svcPerMinute, svcBurst                  *int
	svcErr                                  *float64
	serviceHost                             *string
}

func addKnobFlags(fs *flag.FlagSet) *knobFlags {
	return &knobFlags{
		fs:            fs,
		regsPerMinute: fs.Int("registrations-per-minute", 0, "registration `quota` per minute for the instance (default: the config's; 0 = 1000 like DPS; negative = unlimited)"),
		regBurst:      fs.Int("registration-burst", 0, "registrations allowed at once before the per-minute rate applies (default: the config's; 0 = one minute's worth)"),
		pollsPer10s:   fs.Int("polls-per-10s", 0, "operation status polls allowed per device per 10 seconds (default: the config's; 0 = 5 like DPS; negative = unlimited)"),
		retryAfter:    fs.Int("retry-after", 0, "Retry-After `seconds` sent with every 202 (0 to 300; default: the config's, else 3)"),
		assignDelay:   fs.Duration("assignment-delay", 0, "how long an operation stays assigning, e.g. 2s (default: the config's, else 0)"),
		stayAssigning: fs.Int("stay-assigning-polls", 0, "answer the first `N` polls of every operation with 202 assigning"),
		seed:          fs.Int64("fault-seed", 0, "seed of the fault sequence (the same seed gives the same faults to the same devices)"),
		regErr:        fs.Float64("register-error-rate", 0, "`probability` (0..1) that a register PUT answers 500 or 503"),
		pollErr:       fs.Float64("poll-error-rate", 0, "`probability` (0..1) that a poll answers 500 or 503"),
		lookupErr:     fs.Float64("lookup-error-rate", 0, "`probability` (0..1) that a status lookup answers 500 or 503"),
		drop:          fs.Float64("drop-rate", 0, "`probability` (0..1) that a request's connection is closed before it has any effect"),
		dropR:         fs.Float64("drop-response-rate", 0, "`probability` (0..1) that a request takes effect but its response is lost"),
		latency:       fs.Duration("latency", 0, "latency added to every device request, e.g. 50ms"),
		jitter:        fs.Duration("latency-jitter", 0, "extra random latency, uniform in [0, jitter)"),
		lateRate:      fs.Float64("late-effect-rate", 0, "`probability` (0..1) that a register PUT takes effect late (--late-effect-delay after it arrives), even if its client has gone by then"),
		lateFirstPuts: fs.Int("late-effect-first-puts", 0, "only each device's first `N` register requests may be late (0 = any)"),
		lateDelay:     fs.Duration("late-effect-delay", 0, "how long after arrival a late register PUT takes effect, e.g. 5s"),
		lateAnswer:    fs.Duration("late-answer-delay", 0, "how long after taking effect a late register PUT is answered, if its client is still there"),
		lookupWhileAssigning: fs.String("lookup-while-assigning", "", "`mode` of the status lookup while an operation runs: assigning (status assigning), notFound (404 + 404201) "+
			"or previous (the last completed record, 404201 if none) (default: the config's, else assigning)"),
		bare404:     fs.Float64("lookup-bare-404-rate", 0, "`probability` (0..1) that a status lookup answers a bare 404 (text/plain, no DPS error body or headers), as a proxy would"),
		badBodyRate: fs.Float64("register-bad-body-rate", 0, "`probability` (0..1) that a register PUT takes effect but gets an unusable 2xx answer (see --register-bad-body)"),
		badBody: fs.String("register-bad-body", "", "`kind` of unusable register answer: truncated (half the 202 body, then the connection closes), noOperationId (202 without operationId) "+
			"or syncAssigned (200 with the final registrationState, no operationId) (default: the config's, else truncated)"),
		svcPerMinute: fs.Int("service-operations-per-minute", 0, "service API `quota` per minute for the instance; a bulk call is one operation (default: the config's; 0 = 1000 like DPS; negative = unlimited)"),
		svcBurst:     fs.Int("service-operation-burst", 0, "service API `requests` allowed at once before the per-minute rate applies (default: the config's; 0 = one minute's worth)"),
		svcErr:       fs.Float64("service-error-rate", 0, "`probability` (0..1) that a service API request answers 500 or 503 without effect"),
		serviceHost:  fs.String("service-host", "", "also accept service SAS tokens scoped to this host `name`, e.g. mydps.azure-devices-provisioning.net (default: the config's serviceHostName)"),
	}
}

// apply overrides cfg with the flags that were given.
func (k *knobFlags) apply(cfg *dpssim.Config) {
	k.fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "registrations-per-minute":
			cfg.Quotas.RegistrationsPerMinute = *k.regsPerMinute
		case "registration-burst":
			cfg.Quotas.RegistrationBurst = *k.regBurst
		case "polls-per-10s":
			cfg.Quotas.PollsPer10sPerDevice = *k.pollsPer10s
		case "retry-after":
			cfg.RetryAfterSeconds = k.retryAfter
		case "assignment-delay":
			cfg.AssignmentDelay = dpssim.Duration(*k.assignDelay)
		case "stay-assigning-polls":
			cfg.Faults.StayAssigningPolls = *k.stayAssigning
		case "fault-seed":
			cfg.Faults.Seed = *k.seed
		case "register-error-rate":
			cfg.Faults.RegisterErrorRate = *k.regErr
		case "poll-error-rate":
			cfg.Faults.PollErrorRate = *k.pollErr
		case "lookup-error-rate":
			cfg.Faults.LookupErrorRate = *k.lookupErr
		case "drop-rate":
			cfg.Faults.DropConnectionRate = *k.drop
		case "drop-response-rate":
			cfg.Faults.DropResponseRate = *k.dropR
		case "latency":
			cfg.Faults.Latency = dpssim.Duration(*k.latency)
		case "latency-jitter":
			cfg.Faults.LatencyJitter = dpssim.Duration(*k.jitter)
		case "late-effect-rate":
			cfg.Faults.LateEffectRate = *k.lateRate
		case "late-effect-first-puts":
			cfg.Faults.LateEffectFirstPuts = *k.lateFirstPuts
		case "late-effect-delay":
			cfg.Faults.LateEffectDelay = dpssim.Duration(*k.lateDelay)
		case "late-answer-delay":
			cfg.Faults.LateAnswerDelay = dpssim.Duration(*k.lateAnswer)
		case "lookup-while-assigning":
			cfg.LookupWhileAssigning = *k.lookupWhileAssigning
		case "lookup-bare-404-rate":
			cfg.Faults.LookupBare404Rate = *k.bare404
		case "register-bad-body-rate":
			cfg.Faults.RegisterBadBodyRate = *k.badBodyRate
		case "register-bad-body":
			cfg.Faults.RegisterBadBody = *k.badBody
		case "service-operations-per-minute":
			cfg.Quotas.ServiceOperationsPerMinute = *k.svcPerMinute
		case "service-operation-burst":
			cfg.Quotas.ServiceOperationBurst = *k.svcBurst
		case "service-error-rate":
			cfg.Faults.ServiceErrorRate = *k.svcErr
		case "service-host":
			cfg.ServiceHostName = *k.serviceHost
		}
	})
}

func runSimServe(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "sim", simPurpose, simExamples...)
	configPath := fs.String("config", "", "simulator configuration `file` (JSON; dps-batch certs fleet writes one); required")
	listen := fs.String("listen", "127.0.0.1:8443", "`address` to listen on; port 0 picks a free port")
	port := fs.Int("port", -1, "listen on this `port` of the --listen host instead (0 = a free port)")
	caOut := fs.String("ca-out", "", "where the server CA certificate is written (`file`.pem; its key goes next to it as .key); default sim-ca.pem next to the config")
	newCA := fs.Bool("new-ca", false, "make a new server CA even if --ca-out already holds one")
	allowRemote := fs.Bool("allow-non-loopback", false, "allow listening on addresses other than loopback (exposes the unauthenticated /_sim/ admin API)")
	verbose := fs.Bool("v", false, "log every device and service API request on stderr (never credentials)")
	connOut := fs.String("service-connection-string-out", "", "write the service API connection string (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...) to this `file` (0600); "+
		"default sim-service.conn next to the config when the config has no servicePolicies (its key is then reused on the next start)")
	connPolicy := fs.String("service-policy", "", "shared access `policy` whose connection string --service-connection-string-out writes (default provisioningserviceowner, else the config's first)")
	knobs := addKnobFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	const example = "dps-batch sim --config ./fleet/sim.json --listen 127.0.0.1:8443"
	if err := requireFlag(fs, "config", *configPath, example); err != nil {
		return err
	}
	host, portStr, err := net.SplitHostPort(*listen)
	if err != nil {
		return usagef(example, "--listen %q: %v", *listen, err)
	}
	if *port >= 0 {
		portStr = strconv.Itoa(*port)
	}
	addr := net.JoinHostPort(host, portStr)
	if !*allowRemote && !dpssim.IsLoopback(host) {
		return usagef(example, "--listen %s is not a loopback address; the simulator and its admin API serve this machine only (use 127.0.0.1, ::1 or localhost, or add --allow-non-loopback)", addr)
	}
	caPath := *caOut
	if caPath == "" {
		caPath = filepath.Join(filepath.Dir(*configPath), "sim-ca.pem")
	}
	if filepath.Ext(caPath) != ".pem" {
		return usagef(example, "--ca-out %q must end in .pem (the CA key is written next to it as .key)", caPath)
	}

	cfg, err := dpssim.LoadConfig(*configPath)
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	knobs.apply(cfg)
	connPath, connState := *connOut, ""
	if len(cfg.ServicePolicies) == 0 {
		// DPS makes provisioningserviceowner with every instance; the
		// simulator keeps its key in the connection string file, so clients
		// keep working across restarts.
		if connPath == "" {
			connPath = filepath.Join(filepath.Dir(*configPath), "sim-service.conn")
		}
		var key string
		key, connState = loadOrCreateServiceKey(connPath)
		cfg.ServicePolicies = []dpssim.ServicePolicy{{Name: dpssim.DefaultServicePolicy, PrimaryKey: key, Rights: []string{
			dpssim.RightServiceConfig, dpssim.RightEnrollmentRead, dpssim.RightEnrollmentWrite, dpssim.RightRegistrationStatusRead, dpssim.RightRegistrationStatusWrite}}}
	}
	sim, err := dpssim.New(*cfg)
	if err != nil {
		return &exitError{code: exitUsage, err: fmt.Errorf("%s with the flags given: %w", *configPath, err)}
	}
	if *verbose {
		sim.Logger = slog.New(slog.NewTextHandler(e.stderr, nil))
	}
	ca, caState, err := loadOrCreateServerCA(caPath, *newCA)
	if err != nil {
		return err
	}
	run, err := dpssim.Start(sim, dpssim.StartOptions{Addr: addr, CA: ca, AllowNonLoopback: *allowRemote})
	if err != nil {
		return err
	}
	var policyNames []string
	for _, p := range sim.ServicePolicies() {
		policyNames = append(policyNames, p.Name)
	}
	if connPath != "" {
		cs, err := sim.ServiceConnectionString(run.Addr, *connPolicy)
		if err == nil {
			err = certs.WriteSecretFile(connPath, []byte(cs+"\n"), true)
		}
		if err != nil {
			_ = run.Close()
			return &exitError{code: exitUsage, err: fmt.Errorf("service connection string: %w", err)}
		}
		if connState == "" {
			connState = "written"
		}
	}

	w := e.stdout
	fmt.Fprintf(w, "DPS simulator serving %s (ID scope %s)\n", run.URL, sim.IDScope())
	fmt.Fprintf(w, "  server CA:   %s (%s; trust it with --ca-file or curl --cacert)\n", caPath, caState)
	verified := 0
	for _, c := range sim.Certificates() {
		if c.Verified {
			verified++
		}
	}
	fmt.Fprintf(w, "  enrollments: %d individual, %d group; CA certificates: %d (%d verified)\n",
		len(cfg.Individual), len(cfg.Groups), len(cfg.Certificates), verified)
	if n := len(cfg.Registrations); n > 0 {
		fmt.Fprintf(w, "  registered:  %d device(s) registered before this start (the config's registrations)\n", n)
	}
	fmt.Fprintf(w, "  hubs:        %s\n", strings.Join(sim.Hubs(), ", "))
	fmt.Fprintf(w, "  service API: %s (policies: %s)\n", run.URL, strings.Join(policyNames, ", "))
	if connPath != "" {
		fmt.Fprintf(w, "  connection:  %s (%s; 0600; export DPS_SERVICE_CONNECTION_STRING=\"$(cat %s)\")\n", connPath, connState, connPath)
	}
	fmt.Fprintf(w, "  inspect:     curl --cacert %s %s/_sim/stats\n", caPath, run.URL)
	if *allowRemote && !dpssim.IsLoopback(host) {
		fmt.Fprintf(e.stderr, "warning: listening on %s: anyone who can reach it can use the /_sim/ admin API\n", run.Addr)
	}
	fmt.Fprintf(w, "Press Ctrl-C to stop.\n")

	select {
	case <-e.drain:
	case <-ctx.Done():
	case <-run.Done():
		return fmt.Errorf("simulator stopped serving: %w", run.Err())
	}
	// Held register requests would keep Shutdown waiting.
	sim.Release()
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if ctx.Err() != nil {
		_ = run.Close()
	} else if err := run.Shutdown(sctx); err != nil {
		_ = run.Close()
	}
	st := sim.Stats()
	fmt.Fprintf(w, "DPS simulator stopped: %d register requests (%d operations), %d polls, %d lookups, %d throttled, %d conflicts, %d late effects, %d faults; %d registrations, %d assigned\n",
		st.RegisterRequests, st.Registers, st.Polls, st.Lookups, st.Throttled, st.Conflicts, st.LateEffects, st.Faults, st.Registrations, st.Assigned)
	if st.ServiceRequests > 0 {
		fmt.Fprintf(w, "  service API: %d requests, %d throttled, %d faults; enrollments %d created, %d updated, %d deleted (%d now); %d groups created; %d registration states deleted\n",
			st.ServiceRequests, st.ServiceThrottled, st.ServiceFaults, st.EnrollmentCreates, st.EnrollmentUpdates, st.EnrollmentDeletes, st.IndividualEnrollments, st.GroupCreates, st.RegistrationDeletes)
	}
	return nil
}

// loadOrCreateServiceKey returns the provisioningserviceowner key of the
// connection string file at path, or a new random one when the file is
// absent or not one of ours. The second result says which.
func loadOrCreateServiceKey(path string) (key, state string) {
	if b, err := os.ReadFile(path); err == nil {
		fields := map[string]string{}
		for _, part := range strings.Split(strings.TrimSpace(string(b)), ";") {
			if k, v, ok := strings.Cut(part, "="); ok {
				fields[strings.ToLower(k)] = v
			}
		}
		if k, err := base64.StdEncoding.DecodeString(fields["sharedaccesskey"]); err == nil && len(k) >= 16 && len(k) <= 64 &&
			fields["sharedaccesskeyname"] == dpssim.DefaultServicePolicy {
			return fields["sharedaccesskey"], "key reused"
		}
	}
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return base64.StdEncoding.EncodeToString(k), "new key"
}

// loadOrCreateServerCA reuses the CA at caPath and its key next to it, so
// clients keep trusting a restarted simulator, or makes and writes a new one
// (also when the old one cannot be reused: the files are the simulator's
// own output). The second result says which, for the start-up message.
func loadOrCreateServerCA(caPath string, fresh bool) (*certs.CA, string, error) {
	keyPath := strings.TrimSuffix(caPath, ".pem") + ".key"
	state := "new"
	if _, err := os.Stat(caPath); err == nil && !fresh {
		ca, err := certs.LoadCA(caPath, keyPath)
		switch {
		case err != nil:
			state = fmt.Sprintf("new; the previous one was not reusable: %v", err)
		case time.Until(ca.Cert.NotAfter) < 24*time.Hour:
			state = "new; the previous one expires within a day"
		default:
			return ca, "reused", nil
		}
	}
	ca, err := dpssim.NewServerCA()
	if err != nil {
		return nil, "", err
	}
	dir, base := filepath.Split(caPath)
	if dir == "" {
		dir = "."
	}
	if _, err := certs.WriteCA(dir, ca, strings.TrimSuffix(base, ".pem"), true); err != nil {
		return nil, "", fmt.Errorf("server CA: %w", err)
	}
	return ca, state, nil
}

func runSimVerificationCode(e *env, args []string) error {
	const example = "dps-batch sim verification-code --config ./sim.json --ca my-root"
	fs := newFlagSet(e, "sim verification-code",
		"Print the proof-of-possession code the simulator expects for a CA certificate\n"+
			"of the config: the CN of the verification certificate to make with\n"+
			"\"dps-batch certs verification\". The code is derived from the certificate, so a\n"+
			"running simulator (POST /_sim/certificates/{name}/verificationCode) gives the same.",
		example,
		`code=$(dps-batch sim verification-code --config sim.json --ca my-root)
dps-batch certs verification --ca ./pki/root.pem --ca-key ./pki/root.key --code "$code" --out ./pki/verification.pem
dps-batch sim verify --config sim.json --ca my-root --cert ./pki/verification.pem`)
	configPath := fs.String("config", "", "simulator configuration `file`; required")
	name := fs.String("ca", "", "`name` of the CA certificate in the config's certificates; required")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireFlag(fs, "config", *configPath, example); err != nil {
		return err
	}
	if err := requireFlag(fs, "ca", *name, example); err != nil {
		return err
	}
	cfg, err := dpssim.LoadConfig(*configPath)
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	sim, err := dpssim.New(*cfg)
	if err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	code, err := sim.CertificateVerificationCode(*name)
	if err != nil {
		return usagef(example, "%s: %v", *configPath, err)
	}
	fmt.Fprintln(e.stdout, code)
	return nil
}

func runSimVerify(e *env, args []string) error {
	const example = "dps-batch sim verify --config ./sim.json --ca my-root --cert ./pki/verification.pem"
	fs := newFlagSet(e, "sim verify",
		"Complete proof of possession offline: check that a verification certificate has\n"+
			"the CA's verification code as its CN and is signed by the CA's key, then set\n"+
			"\"verified\": true for that CA in the config file.",
		example)
	configPath := fs.String("config", "", "simulator configuration `file` to update; required")
	name := fs.String("ca", "", "`name` of the CA certificate in the config's certificates; required")
	certPath := fs.String("cert", "", "verification certificate `file` (PEM); required")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	for _, f := range []struct{ name, v string }{{"config", *configPath}, {"ca", *name}, {"cert", *certPath}} {
		if err := requireFlag(fs, f.name, f.v, example); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(*certPath)
	if err != nil {
		return &exitError{code: exitUsage, err: fmt.Errorf("verification certificate: %w", err)}
	}
	cs, err := certs.ParseCertsPEM(data)
	if err != nil || len(cs) == 0 {
		if err == nil {
			err = errors.New("no certificate found")
		}
		return &exitError{code: exitUsage, err: fmt.Errorf("verification certificate %s: %w", *certPath, err)}
	}
	if err := dpssim.MarkCertificateVerified(*configPath, *name, cs[0], time.Now()); err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	fmt.Fprintf(e.stdout, "CA certificate %q is verified in %s\n", *name, *configPath)
	return nil
}
