// Package dpssim is a local simulator of the Azure IoT Hub Device
// Provisioning Service (DPS) device and service APIs, faithful enough that
// the dps client, curl and the official device and service SDKs accept it.
//
// It verifies credentials like DPS (X.509 client certificates matched to
// individual enrollments or walked up to a verified enrollment-group CA; SAS
// tokens signed with enrollment or derived group keys), answers
// asynchronously like DPS (a register PUT returns 202 "assigning" and an
// operation id; polls return 202 until the assignment is done, then 200 with
// the registration state), throttles like DPS (registrations per minute,
// polls per device per 10 seconds, 429 with Retry-After) and fails on demand
// (5xx, dropped connections, latency, slow assignment), deterministically
// for a given seed.
//
// It also produces, on demand, what DPS leaves undocumented, so that a
// client's promise never to register a device twice can be tested: register
// PUTs that take effect late, after their client gave up
// (Faults.LateEffectRate); unusable 2xx answers to PUTs that took effect
// (Faults.RegisterBadBodyRate); what the status lookup shows while an
// operation runs (Knobs.LookupWhileAssigning); bare 404s from a proxy
// (Faults.LookupBare404Rate); and records of devices that registered before
// the server started (Config.Registrations). RegistrationInfo.Registers and
// RegisterTimes count the registrations that took effect, whatever the
// client saw.
//
// A Server is an http.Handler holding all state in memory. Serve it with
// Start (or StartTLS), which mints a server CA and certificate for loopback,
// or in-process with httptest:
//
//	sim, err := dpssim.New(cfg)
//	ts := httptest.NewUnstartedServer(sim)
//	ts.TLS = sim.TLSConfig(tls.Certificate{})
//	ts.StartTLS()
//
// The same listener serves the DPS service API (api-version 2021-10-01):
// individual enrollments and enrollment groups (CRUD with If-Match, bulk
// operations of at most 10, paged queries) and registration states, under
// service SAS tokens of Config.ServicePolicies (rights enforced) or bearer
// tokens of Config.EntraIssuers (TestIssuer mints them offline), with its
// own quota (Quotas.ServiceOperationsPerMinute) and faults
// (Faults.ServiceErrorRate). Enrollments created through it are what the
// device API attests against at once; Enrollments and EnrollmentInfo count
// the creates, updates and deletes that took effect per id.
//
// Device api-version 2025-07-01-preview issues certificates at
// registration: an enrollment names a credential policy
// (Config.CredentialPolicies, CredentialPolicyName), the register PUT
// carries a PKCS#10 CSR (checked at once: signature, CN = registration id,
// EC P-384 only; 400 otherwise), and the final operation answer carries
// registrationState.issuedCertificateChain (leaf, intermediates, root),
// handed over once (Knobs.IssuedChainEveryPoll to repeat it) and never by
// the status lookup. Faults.LoseIssuedAnswerRate loses that answer;
// RegistrationInfo.CertificatesIssued and ChainsDelivered count what was
// issued and what reached the client, and /_sim/credential-policies
// (Server.CredentialPolicies) gives the CA chain to verify against.
//
// Under /_sim/ the same listener serves inspection (per-registration counts
// of register PUTs, polls and lookups; totals by HTTP status) and admin
// endpoints (run-time knobs, hold/release, CA proof of possession), without
// client certificates. Registrations and Stats give the same in Go.
//
// The protocol details it reproduces, with their sources, are in
// dps-protocol.md (§10.1 is the checklist). dpssim imports the dps package
// for wire types only, and never the batch runner, ledger or manifests.
package dpssim
