package dpssim

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// Defaults used when the corresponding Config field is zero.
const (
	// DefaultIDScope is the ID scope served when Config.IDScope is empty. It
	// is also what "dps-batch certs fleet" writes when given no scope.
	DefaultIDScope = "0ne00000000"
	// DefaultRetryAfterSeconds is the Retry-After DPS sends on its 202s.
	DefaultRetryAfterSeconds = 3
	// DefaultRegistrationsPerMinute is the DPS registration quota per instance.
	DefaultRegistrationsPerMinute = 1000
	// DefaultPollsPer10sPerDevice is the DPS operation-status polling quota.
	DefaultPollsPer10sPerDevice = 5
	// DefaultServiceOperationsPerMinute is the DPS service operations quota.
	DefaultServiceOperationsPerMinute = 1000
	// DefaultHubField is the payload field the custom allocation policy reads.
	DefaultHubField = "iotHub"
)

// DefaultHubs are the linked IoT hubs used when Config.Hubs is empty.
var DefaultHubs = []string{"hub-1.azure-devices.net", "hub-2.azure-devices.net"}

// Allocation policies (Config.Allocation). The names follow the DPS service
// API's allocationPolicy values where one exists.
const (
	// AllocationHashed picks a hub from a hash of the registration id, so a
	// device always lands on the same hub (DPS's "evenly weighted
	// distribution", allocationPolicy "hashed"). The default.
	AllocationHashed = "hashed"
	// AllocationEvenlyWeighted picks the linked hub with the fewest devices
	// assigned so far (ties go to the hub listed first). A repeat
	// registration is re-evaluated and may move the device.
	AllocationEvenlyWeighted = "evenlyWeighted"
	// AllocationStatic sends every device to the first linked hub (or the
	// enrollment's iotHub).
	AllocationStatic = "static"
	// AllocationCustom lets the registration payload pick the hub, standing in
	// for a DPS custom allocation webhook: the payload field named by
	// CustomAllocation.HubField names a linked hub. A payload without the
	// field falls back to hashed; a field naming a hub that is not linked
	// fails the registration with 400207.
	AllocationCustom = "custom"
)

// Provisioning status values of an enrollment.
const (
	ProvisioningEnabled  = "enabled"
	ProvisioningDisabled = "disabled"
)

// Config describes one simulated DPS instance: its ID scope, linked hubs,
// CA certificates and enrollments, plus quotas and fault knobs. It is read
// from a JSON file by LoadConfig; every field may be omitted and the zero
// value is a working, empty instance. Example:
//
//	{
//	  "idScope": "0ne00000000",
//	  "hubs": ["hub-1.azure-devices.net", "hub-2.azure-devices.net"],
//	  "allocationPolicy": "hashed",
//	  "certificates": [
//	    {"name": "fleet-ca", "file": "ca/intermediate.pem", "verified": true}
//	  ],
//	  "enrollmentGroups": [
//	    {"enrollmentGroupId": "fleet", "attestation": {"x509": {"caCertificate": "fleet-ca"}}},
//	    {"enrollmentGroupId": "sensors", "attestation": {"symmetricKey": {"primaryKey": "base64..."}}}
//	  ],
//	  "individualEnrollments": [
//	    {"registrationId": "dev-1", "attestation": {"x509": {"certificateFile": "dev-1.pem"}}, "deviceId": "boiler-1"},
//	    {"registrationId": "dev-2", "attestation": {"symmetricKey": {"primaryKey": "base64...", "secondaryKey": "base64..."}},
//	     "provisioningStatus": "disabled"}
//	  ],
//	  "retryAfterSeconds": 3,
//	  "assignmentDelay": "500ms",
//	  "quotas": {"registrationsPerMinute": 1000, "pollsPer10sPerDevice": 5},
//	  "faults": {"seed": 1, "registerErrorRate": 0.05, "latency": "20ms"},
//	  "lookupWhileAssigning": "assigning",
//	  "registrations": [
//	    {"registrationId": "dev-1", "status": "assigned", "assignedHub": "hub-2.azure-devices.net"}
//	  ],
//	  "credentialPolicies": [
//	    {"name": "factory", "certificateFile": "issuing/ca-chain.pem", "keyFile": "issuing/ca.key", "validityDays": 30}
//	  ]
//	}
//
// File paths (file, certificateFile, signingCertificateFile, keyFile) are
// relative to the directory of the configuration file.
type Config struct {
	// IDScope is the scope devices put first in every path; "" means
	// DefaultIDScope.
	IDScope string `json:"idScope"`
	// Hubs are the linked IoT hub host names; empty means DefaultHubs.
	Hubs []string `json:"hubs,omitempty"`
	// Allocation is the allocation policy: "hashed" (the default when
	// empty), "evenlyWeighted", "static" or "custom"; see the Allocation*
	// constants.
	Allocation string `json:"allocationPolicy,omitempty"`
	// CustomAllocation tunes the "custom" policy and payload echoing.
	CustomAllocation CustomAllocation `json:"customAllocation,omitzero"`
	// Certificates are the CA certificates uploaded to the instance, each
	// verified (proof of possession done) or not.
	Certificates []CACertificate `json:"certificates"`
	// Individual are the individual enrollments, one per registration id.
	Individual []IndividualEnrollment `json:"individualEnrollments"`
	// Groups are the enrollment groups, tried in order.
	Groups []EnrollmentGroup `json:"enrollmentGroups"`
	// RetryAfterSeconds is the Retry-After sent with every 202; nil means
	// DefaultRetryAfterSeconds, 0 asks clients not to wait (fast tests).
	RetryAfterSeconds *int `json:"retryAfterSeconds,omitempty"`
	// AssignmentDelay is how long an operation stays "assigning" after its
	// register PUT; zero means it is assigned by the first poll. JSON: "1.5s".
	AssignmentDelay Duration `json:"assignmentDelay"`
	// Quotas are the throttling limits.
	Quotas Quotas `json:"quotas"`
	// Faults are the injected failures; the zero value injects none.
	Faults Faults `json:"faults"`
	// LookupWhileAssigning is what the status lookup shows while a
	// device's operation runs: "assigning" ("" means this), "notFound" or
	// "previous"; see Knobs.LookupWhileAssigning.
	LookupWhileAssigning string `json:"lookupWhileAssigning,omitempty"`
	// Registrations are registration records that exist when the server
	// starts, as DPS keeps them for devices that registered before (say,
	// yesterday). The status lookup returns them; they are not counted in
	// Registers, which counts only registrations that took effect at this
	// server. Empty means every device starts unregistered.
	Registrations []ExistingRegistration `json:"registrations,omitempty"`

	// ServiceHostName is a host name service API SAS tokens may be scoped
	// to (sr), besides the Host the request was sent to, e.g.
	// "mydps.azure-devices-provisioning.net", so that clients can sign for a
	// realistic host while connecting to the simulator. "" accepts only the
	// request's Host.
	ServiceHostName string `json:"serviceHostName,omitempty"`
	// ServicePolicies are the shared access policies of the service API
	// (DPS "Shared access policies"). Empty means one policy,
	// DefaultServicePolicy, with every right and a random key (see
	// Server.ServicePolicies and Server.ServiceConnectionString).
	ServicePolicies []ServicePolicy `json:"servicePolicies,omitempty"`
	// EntraIssuers are the token issuers whose bearer tokens (JWT, ES256,
	// RS256 or HS256) the service API accepts, standing in for Microsoft
	// Entra ID. Empty means bearer tokens are refused.
	EntraIssuers []EntraIssuer `json:"entraIssuers,omitempty"`
	// CredentialPolicies are the certificate-issuing policies (Azure Device
	// Registry credential policies) that enrollments name with
	// credentialPolicyName: a device of such an enrollment that sends a CSR
	// with its register PUT (api-version 2025-07-01-preview) gets a
	// certificate issued by the policy's CA in the final operation result.
	CredentialPolicies []CredentialPolicy `json:"credentialPolicies,omitempty"`
	// IssuedChainEveryPoll returns an issued certificate chain in every
	// final answer of its operation instead of only the first; see
	// Knobs.IssuedChainEveryPoll.
	IssuedChainEveryPoll bool `json:"issuedChainEveryPoll,omitempty"`
}

// CredentialPolicy issues device certificates from a CA, as an Azure Device
// Registry credential policy does for DPS.
type CredentialPolicy struct {
	// Name is what enrollments give as credentialPolicyName.
	Name string `json:"name"`
	// CertificateFile is the issuing CA's certificate (PEM), optionally
	// followed by its chain up to and including the root; the issued chain
	// is the leaf followed by these. "" makes a fresh P-384 root and
	// issuing CA at start (see the /_sim/ inspection for its PEM).
	CertificateFile string `json:"certificateFile,omitempty"`
	// KeyFile is the issuing CA's private key (PEM, EC P-384).
	KeyFile string `json:"keyFile,omitempty"`
	// Certificate is CertificateFile's content (PEM) given inline; set one
	// of the two.
	Certificate string `json:"certificate,omitempty"`
	// Key is KeyFile's content (PEM) given inline; set one of the two.
	Key string `json:"key,omitempty"`
	// ValidityDays is the issued certificates' validity: 7 to 90 (the
	// preview's limits); 0 means 30.
	ValidityDays int `json:"validityDays,omitempty"`
}

// DefaultServicePolicy is the shared access policy DPS creates with every
// instance; the simulator makes it (with a random key) when the config
// names no policy.
const DefaultServicePolicy = "provisioningserviceowner"

// Service API rights of a shared access policy (DPS "permissions").
const (
	RightServiceConfig           = "ServiceConfig"
	RightEnrollmentRead          = "EnrollmentRead"
	RightEnrollmentWrite         = "EnrollmentWrite"
	RightRegistrationStatusRead  = "RegistrationStatusRead"
	RightRegistrationStatusWrite = "RegistrationStatusWrite"
)

// ServicePolicy is a shared access policy of the service API: a name (the
// SAS token's skn), keys that sign tokens, and the rights they grant.
type ServicePolicy struct {
	// Name is the policy name, e.g. "provisioningserviceowner".
	Name string `json:"name"`
	// PrimaryKey is the base64 key (16 to 64 bytes decoded); required.
	PrimaryKey string `json:"primaryKey"`
	// SecondaryKey is optional; tokens signed with either key are accepted.
	SecondaryKey string `json:"secondaryKey,omitempty"`
	// Rights are what the policy grants: EnrollmentRead, EnrollmentWrite,
	// RegistrationStatusRead, RegistrationStatusWrite and ServiceConfig.
	// Each operation needs its own right (a write right does not include
	// the read right, as DPS lists them separately).
	Rights []string `json:"rights"`
}

// EntraIssuer is a token issuer the service API trusts for
// "Authorization: Bearer <JWT>", standing in for Microsoft Entra ID. Set
// one key: PublicKeyPEM (or PublicKeyFile) for ES256/RS256, or HMACKey for
// HS256. Tokens must carry iss, aud and exp; their "roles" claim names DPS
// data-plane roles (RoleDataContributor, RoleDataReader). TestIssuer makes
// one and mints tokens for it.
type EntraIssuer struct {
	// Issuer is the iss claim tokens must carry, e.g. "https://test-issuer.local".
	Issuer string `json:"issuer"`
	// Audience is the aud claim tokens must carry; "" means
	// DefaultEntraAudience.
	Audience string `json:"audience,omitempty"`
	// PublicKeyPEM is the issuer's public key (PKIX "PUBLIC KEY" PEM, or a
	// certificate), ECDSA P-256 for ES256 or RSA for RS256.
	PublicKeyPEM string `json:"publicKeyPEM,omitempty"`
	// PublicKeyFile is PublicKeyPEM read from a file.
	PublicKeyFile string `json:"publicKeyFile,omitempty"`
	// HMACKey is a base64 shared key for HS256 tokens (tests only).
	HMACKey string `json:"hmacKey,omitempty"`
}

// DefaultEntraAudience is the audience of Entra tokens for DPS (scope
// "https://azure-devices-provisioning.net/.default").
const DefaultEntraAudience = "https://azure-devices-provisioning.net"

// ExistingRegistration is a registration record present when the server
// starts (Config.Registrations).
type ExistingRegistration struct {
	// RegistrationID is the device's registration id (required; DPS rules).
	RegistrationID string `json:"registrationId"`
	// Status is "assigned", "failed" or "disabled" (required).
	Status string `json:"status"`
	// AssignedHub is the device's hub: required when assigned, and must be
	// a linked hub; not allowed otherwise.
	AssignedHub string `json:"assignedHub,omitempty"`
	// DeviceID is the IoT Hub device id when assigned; "" means the
	// registration id.
	DeviceID string `json:"deviceId,omitempty"`
	// Substatus is the assignment's substatus when assigned:
	// initialAssignment ("" means this), deviceDataMigrated,
	// deviceDataReset or reprovisionedToInitialAssignment.
	Substatus string `json:"substatus,omitempty"`
	// ErrorCode is the 6-digit code of a failed or disabled registration;
	// 0 means 400207 for failed and 400209 for disabled.
	ErrorCode int `json:"errorCode,omitempty"`
	// ErrorMessage goes with ErrorCode; "" means a generic message.
	ErrorMessage string `json:"errorMessage,omitempty"`
	// CreatedDateTimeUTC is when the device first registered (JSON: RFC
	// 3339, as DPS writes it); zero means when the server was created (New),
	// or LastUpdatedDateTimeUTC if that is earlier.
	CreatedDateTimeUTC time.Time `json:"createdDateTimeUtc,omitzero"`
	// LastUpdatedDateTimeUTC is when the record last changed; zero means
	// when the server was created, or CreatedDateTimeUTC if that is later.
	// It must not be before the created time.
	LastUpdatedDateTimeUTC time.Time `json:"lastUpdatedDateTimeUtc,omitzero"`
	// ETag is the record's etag; "" means a fresh DPS-shaped one.
	ETag string `json:"etag,omitempty"`
	// Enrollment names the enrollment that admitted the device,
	// "individual:<registrationId>" or "group:<enrollmentGroupId>"; ""
	// means the device's individual enrollment if there is one, else
	// unknown until it registers again.
	Enrollment string `json:"enrollment,omitempty"`
}

// CustomAllocation configures the "custom" allocation policy, which stands in
// for a DPS custom allocation webhook.
type CustomAllocation struct {
	// HubField is the top-level payload field whose string value names the
	// hub; "" means DefaultHubField ("iotHub").
	HubField string `json:"hubField,omitempty"`
	// EchoPayload returns the request payload in registrationState.payload,
	// as a webhook that returns the payload would. It applies whatever the
	// policy; false (the default) returns no payload, like DPS without a
	// webhook.
	EchoPayload bool `json:"echoPayload,omitempty"`
}

// CACertificate is a CA certificate uploaded to the instance (DPS
// "Certificates" blade), referenced by X.509 enrollment groups by name.
type CACertificate struct {
	// Name identifies the certificate in enrollment groups and in the
	// /_sim/certificates/{name} admin endpoints.
	Name string `json:"name"`
	// PEM is the certificate; alternatively File names a PEM file.
	PEM string `json:"pem,omitempty"`
	// File is a PEM file, relative to the configuration file's directory.
	File string `json:"file,omitempty"`
	// Verified says proof of possession of the CA key was done. Groups
	// whose CA is not verified reject every device with 401002, like DPS.
	// The /_sim/certificates/{name}/verify endpoint sets it at run time.
	Verified bool `json:"verified"`
}

// IndividualEnrollment admits one device by registration id.
type IndividualEnrollment struct {
	// RegistrationID is the device's registration id (for X.509, the CN of
	// its certificate).
	RegistrationID string `json:"registrationId"`
	// Attestation is how the device proves its identity: exactly one of
	// x509 (certificate or certificateFile) or symmetricKey.
	Attestation Attestation `json:"attestation"`
	// DeviceID is the IoT Hub device id to create; "" means the
	// registration id.
	DeviceID string `json:"deviceId,omitempty"`
	// IoTHub pins the device to one linked hub, overriding the policy.
	IoTHub string `json:"iotHub,omitempty"`
	// ProvisioningStatus is "enabled" (the default when empty) or
	// "disabled"; a disabled enrollment's operations end "disabled".
	ProvisioningStatus string `json:"provisioningStatus,omitempty"`
	// CredentialPolicyName names the CredentialPolicy that issues its
	// device a certificate from the CSR sent at registration; "" issues
	// none.
	CredentialPolicyName string `json:"credentialPolicyName,omitempty"`
}

// EnrollmentGroup admits every device that proves membership: a certificate
// chaining to the group's CA, or a SAS token signed with a key derived from
// the group key.
type EnrollmentGroup struct {
	// EnrollmentGroupID names the group.
	EnrollmentGroupID string `json:"enrollmentGroupId"`
	// Attestation is exactly one of x509 (caCertificate, signingCertificate
	// or signingCertificateFile) or symmetricKey.
	Attestation Attestation `json:"attestation"`
	// IoTHub pins the group's devices to one linked hub.
	IoTHub string `json:"iotHub,omitempty"`
	// ProvisioningStatus is "enabled" (default) or "disabled".
	ProvisioningStatus string `json:"provisioningStatus,omitempty"`
	// CredentialPolicyName names the CredentialPolicy that issues the
	// group's devices certificates; "" issues none.
	CredentialPolicyName string `json:"credentialPolicyName,omitempty"`
}

// Attestation holds exactly one attestation mechanism.
type Attestation struct {
	// X509 attests with a certificate: the device's own, or a group CA.
	X509 *X509Attestation `json:"x509,omitempty"`
	// SymmetricKey attests with SAS tokens signed by a shared key.
	SymmetricKey *SymmetricKeyAttestation `json:"symmetricKey,omitempty"`
}

// X509Attestation is the X.509 part of an enrollment. Individual enrollments
// set Certificate (or CertificateFile); groups set CACertificate, or
// SigningCertificate (or SigningCertificateFile).
type X509Attestation struct {
	// Certificate is the device certificate (PEM) of an individual
	// enrollment; the device must present exactly this certificate.
	Certificate string `json:"certificate,omitempty"`
	// CertificateFile is Certificate read from a file.
	CertificateFile string `json:"certificateFile,omitempty"`
	// CACertificate names an entry of Config.Certificates (DPS
	// "caReferences"): the group's CA, which must be verified.
	CACertificate string `json:"caCertificate,omitempty"`
	// SigningCertificate is a CA certificate (PEM) uploaded to the group
	// itself (DPS "signingCertificates", the portal's "intermediate
	// certificate" option). Uploading it is enough: no proof of possession.
	SigningCertificate string `json:"signingCertificate,omitempty"`
	// SigningCertificateFile is SigningCertificate read from a file.
	SigningCertificateFile string `json:"signingCertificateFile,omitempty"`
}

// SymmetricKeyAttestation holds base64 keys (16 to 64 bytes decoded). For a
// group they are group keys: devices sign with
// base64(HMAC-SHA256(groupKey, registrationId)).
type SymmetricKeyAttestation struct {
	// PrimaryKey is required.
	PrimaryKey string `json:"primaryKey"`
	// SecondaryKey is optional; tokens signed with either key are accepted.
	SecondaryKey string `json:"secondaryKey,omitempty"`
}

// Quotas are the throttling limits. Register and poll are throttled
// separately, as DPS does; a throttled request gets 429 with Retry-After.
type Quotas struct {
	// RegistrationsPerMinute limits register PUTs for the whole instance
	// (a token bucket refilled at this rate, of RegistrationBurst size); 0 means
	// DefaultRegistrationsPerMinute, negative means unlimited.
	RegistrationsPerMinute int `json:"registrationsPerMinute"`
	// RegistrationBurst is how many registrations may arrive at once
	// before the per-minute rate applies (the bucket size); 0 means one
	// minute's worth. A small burst makes an over-rate client visible in
	// seconds instead of after a minute (tests, benchmarks).
	RegistrationBurst int `json:"registrationBurst,omitempty"`
	// PollsPer10sPerDevice limits operation-status GETs per registration id
	// in any 10-second window; 0 means DefaultPollsPer10sPerDevice,
	// negative means unlimited.
	PollsPer10sPerDevice int `json:"pollsPer10sPerDevice"`
	// ServiceOperationsPerMinute limits service API requests for the whole
	// instance (a bulk call is one operation, as DPS counts every API call
	// as one); 0 means DefaultServiceOperationsPerMinute, negative means
	// unlimited. Throttled requests get 429 with Retry-After.
	ServiceOperationsPerMinute int `json:"serviceOperationsPerMinute"`
	// ServiceOperationBurst is how many service requests may arrive at
	// once before the per-minute rate applies; 0 means one minute's worth.
	ServiceOperationBurst int `json:"serviceOperationBurst,omitempty"`
}

// Faults are injected failures. Every decision is a pure function of Seed,
// the registration id, the kind of request and how many requests of that
// kind the id has sent, so a run is reproducible whatever the interleaving
// of devices. Faults apply to authenticated requests: device requests, and
// service API requests (Latency, LatencyJitter, DropConnectionRate,
// DropResponseRate and ServiceErrorRate, drawn per operation and target,
// e.g. the n-th PUT of /enrollments/dev-1 or the n-th bulk call).
type Faults struct {
	// Seed selects the fault sequence.
	Seed int64 `json:"seed"`
	// RegisterErrorRate is the probability (0..1) that a register PUT
	// answers 500 or 503 (half each) without starting an operation.
	RegisterErrorRate float64 `json:"registerErrorRate"`
	// PollErrorRate is the same for operation-status GETs.
	PollErrorRate float64 `json:"pollErrorRate"`
	// LookupErrorRate is the same for registration status lookups.
	LookupErrorRate float64 `json:"lookupErrorRate"`
	// ServiceErrorRate is the same for service API requests (enrollments,
	// enrollment groups, registration states): 500 or 503 with no effect.
	ServiceErrorRate float64 `json:"serviceErrorRate"`
	// DropConnectionRate is the probability that a request is dropped
	// unanswered (connection closed) before it has any effect.
	DropConnectionRate float64 `json:"dropConnectionRate"`
	// DropResponseRate is the probability that a request takes effect (a
	// register starts its operation) but its response is lost: the
	// connection is closed instead. Clients then cannot tell whether it
	// happened.
	DropResponseRate float64 `json:"dropResponseRate"`
	// Latency is added to every device request.
	Latency Duration `json:"latency"`
	// LatencyJitter adds a further uniform random delay in [0, LatencyJitter).
	LatencyJitter Duration `json:"latencyJitter"`
	// StayAssigningPolls makes the first N polls of every operation answer
	// 202 "assigning" even when the assignment is done.
	StayAssigningPolls int `json:"stayAssigningPolls"`

	// LateEffectRate is the probability (0..1) that a register PUT takes
	// effect late: LateEffectDelay after it arrived (after any Latency),
	// whether or not its client is still connected by then. At that time it
	// goes through exactly what a PUT on time does (409203 while an
	// operation runs, the registration quota, a new operation); a client
	// still connected LateAnswerDelay later gets the normal answer, one
	// that has gone gets nothing. 0 means every PUT takes effect on arrival.
	LateEffectRate float64 `json:"lateEffectRate"`
	// LateEffectFirstPuts limits late effects to each device's first N
	// register requests (authenticated PUTs, counted per registration id);
	// 0 means any request may be late.
	LateEffectFirstPuts int `json:"lateEffectFirstPuts"`
	// LateEffectDelay is how long after arrival a late PUT takes effect
	// (wall-clock time, not Server.Now); 0 means at once, though still
	// detached from the client's connection.
	LateEffectDelay Duration `json:"lateEffectDelay"`
	// LateAnswerDelay is how long after taking effect a late PUT's answer is
	// written; 0 means at once.
	LateAnswerDelay Duration `json:"lateAnswerDelay"`

	// LookupBare404Rate is the probability (0..1) that a registration status
	// lookup answers 404 with a text/plain "Not Found" body and no DPS
	// headers (no x-ms-request-id, no x-ms-error-code, no errorCode), as a
	// proxy or gateway would. It is decided after LookupErrorRate. 0 means
	// never.
	LookupBare404Rate float64 `json:"lookupBare404Rate"`

	// RegisterBadBodyRate is the probability (0..1) that a register PUT that
	// took effect (an operation started, Registers counted it) gets an
	// unusable 2xx answer of the RegisterBadBody kind. A correct client has
	// to look the device up rather than register again. 0 means never.
	RegisterBadBodyRate float64 `json:"registerBadBodyRate"`
	// RegisterBadBody is the kind of unusable answer: "truncated" (half of
	// the 202 JSON body, then the connection is closed), "noOperationId" (a
	// 202 with status assigning and no operationId) or "syncAssigned" (the
	// operation completes at once; a 200 with its final status and full
	// registrationState but no operationId). "" means "truncated".
	RegisterBadBody string `json:"registerBadBody"`

	// LoseIssuedAnswerRate is the probability (0..1) that an answer
	// carrying an issued certificate chain (the first final poll of an
	// operation whose device sent a CSR, or a synchronous register answer)
	// is lost: the certificate is issued and the chain marked handed over,
	// then the connection is closed instead of answering. The status lookup
	// does not return the chain, so the certificate is gone for the client
	// (RegistrationInfo.CertificatesIssued counts it, ChainsDelivered does
	// not). Drawn per poll (or register PUT) like the other faults. 0 means
	// never.
	LoseIssuedAnswerRate float64 `json:"loseIssuedAnswerRate"`
}

// Duration is a time.Duration that reads and writes JSON as a Go duration
// string ("1.5s", "250ms"); a bare JSON number is taken as seconds.
type Duration time.Duration

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: want a value like \"1.5s\" or \"250ms\"", s)
		}
		*d = Duration(v)
		return nil
	}
	secs, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("duration %s: want a string like \"1.5s\" or a number of seconds", b)
	}
	*d = Duration(secs * float64(time.Second))
	return nil
}

// LoadConfig reads and validates a JSON configuration file. File paths in it
// are resolved against the file's directory and the files are read, so the
// returned Config carries the PEM text itself. Errors name the file and the
// offending field (or line and column for syntax errors).
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load simulator config: %w", err)
	}
	var cfg Config
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return nil, fmt.Errorf("load simulator config %s: %w", path, describeJSONError(data, dec.InputOffset(), err))
	}
	if dec.More() {
		return nil, fmt.Errorf("load simulator config %s: unexpected data after the JSON object", path)
	}
	if err := cfg.readFiles(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("load simulator config %s: %w", path, err)
	}
	if _, err := compile(cfg); err != nil {
		return nil, fmt.Errorf("load simulator config %s: %w", path, err)
	}
	return &cfg, nil
}

// describeJSONError adds the line and column of the offending value to a
// decoding error; off is where the decoder stopped.
func describeJSONError(data []byte, off int64, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		line, col := lineCol(data, syn.Offset)
		return fmt.Errorf("line %d, column %d: %w", line, col, err)
	case errors.As(err, &typ):
		line, col := lineCol(data, typ.Offset)
		return fmt.Errorf("line %d, column %d: field %s: want %s, got JSON %s", line, col, typ.Field, typ.Type, typ.Value)
	}
	line, col := lineCol(data, off)
	return fmt.Errorf("near line %d, column %d: %w", line, col, err)
}

func lineCol(data []byte, off int64) (line, col int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	before := data[:off]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(off) - bytes.LastIndexByte(before, '\n')
	return line, col
}

// readFiles replaces every file reference with the file's content. Relative
// paths are taken from dir.
func (c *Config) readFiles(dir string) error {
	// Copy the slices first: the caller's Config must not change.
	c.Certificates = append([]CACertificate(nil), c.Certificates...)
	c.Individual = append([]IndividualEnrollment(nil), c.Individual...)
	c.Groups = append([]EnrollmentGroup(nil), c.Groups...)
	c.Registrations = append([]ExistingRegistration(nil), c.Registrations...)
	c.ServicePolicies = append([]ServicePolicy(nil), c.ServicePolicies...)
	c.EntraIssuers = append([]EntraIssuer(nil), c.EntraIssuers...)
	c.CredentialPolicies = append([]CredentialPolicy(nil), c.CredentialPolicies...)
	// inline takes the content of *file into *content, refusing both.
	inline := func(where, contentName, fileName string, content, file *string) error {
		if *file == "" {
			return nil
		}
		if *content != "" {
			return fmt.Errorf("%s: set %s or %s, not both", where, contentName, fileName)
		}
		p := *file
		if !filepath.IsAbs(p) && dir != "" {
			p = filepath.Join(dir, p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("%s.%s: %w", where, fileName, err)
		}
		*content, *file = string(b), ""
		return nil
	}
	for i := range c.Certificates {
		ca := &c.Certificates[i]
		if err := inline(fmt.Sprintf("certificates[%d] (%s)", i, ca.Name), "pem", "file", &ca.PEM, &ca.File); err != nil {
			return err
		}
	}
	for i := range c.Individual {
		e := &c.Individual[i]
		if x := e.Attestation.X509; x != nil && x.CertificateFile != "" {
			x2 := *x // the caller's attestation must not change either
			where := fmt.Sprintf("individualEnrollments[%d] (%s)", i, e.RegistrationID)
			if err := inline(where, "attestation.x509.certificate", "attestation.x509.certificateFile", &x2.Certificate, &x2.CertificateFile); err != nil {
				return err
			}
			e.Attestation.X509 = &x2
		}
	}
	for i := range c.Groups {
		g := &c.Groups[i]
		if x := g.Attestation.X509; x != nil && x.SigningCertificateFile != "" {
			x2 := *x
			where := fmt.Sprintf("enrollmentGroups[%d] (%s)", i, g.EnrollmentGroupID)
			if err := inline(where, "attestation.x509.signingCertificate", "attestation.x509.signingCertificateFile", &x2.SigningCertificate, &x2.SigningCertificateFile); err != nil {
				return err
			}
			g.Attestation.X509 = &x2
		}
	}
	for i := range c.CredentialPolicies {
		cp := &c.CredentialPolicies[i]
		where := fmt.Sprintf("credentialPolicies[%d] (%s)", i, cp.Name)
		if err := inline(where, "certificate", "certificateFile", &cp.Certificate, &cp.CertificateFile); err != nil {
			return err
		}
		if err := inline(where, "key", "keyFile", &cp.Key, &cp.KeyFile); err != nil {
			return err
		}
	}
	for i := range c.EntraIssuers {
		ei := &c.EntraIssuers[i]
		if err := inline(fmt.Sprintf("entraIssuers[%d] (%s)", i, ei.Issuer), "publicKeyPEM", "publicKeyFile", &ei.PublicKeyPEM, &ei.PublicKeyFile); err != nil {
			return err
		}
	}
	return nil
}

// instance is a validated Config in the form the server uses.
type instance struct {
	idScope      string
	hubs         []string
	hubSet       map[string]bool
	allocation   string
	hubField     string
	echoPayload  bool
	cas          []*caCert
	caByName     map[string]*caCert
	existing     []ExistingRegistration // validated, defaults applied but times and etag
	knobs        Knobs
	serviceHost  string         // Config.ServiceHostName
	policies     []*policy      // service API shared access policies
	issuers      []*entraIssuer // trusted bearer token issuers
	policyByName map[string]*policy
	// credPolicies are the credential policies by name, credPolicyOrder
	// in configuration order. Fixed at start.
	credPolicies    map[string]*credPolicy
	credPolicyOrder []*credPolicy

	// The enrollments change at run time through the service API. Readers
	// (every device request) take mu for reading; the group slices are
	// copy-on-write, so a reader may range over a slice it got after
	// releasing mu. gen counts changes (the X.509 authentication cache
	// forgets results of older generations).
	mu           sync.RWMutex
	gen          atomic.Uint64
	individuals  map[string]*enrollment       // by lower-case registration id
	groups       map[string]*enrollment       // by lower-case enrollment group id
	x509Groups   []*enrollment                // in order of creation (config order first)
	symKeyGroups []*enrollment                // in order of creation (config order first)
	counts       map[string]*enrollmentCounts // "individual:<lower id>" or "group:<lower id>"
}

// caCert is an uploaded CA certificate. verified changes at run time when
// proof of possession is done, so it is atomic.
type caCert struct {
	name     string
	cert     *x509.Certificate
	verified atomic.Bool
	code     string // verification code, derived from the certificate
}

// enrollment is one individual enrollment or group, compiled. It is never
// changed once published: the service API replaces it with a new one.
type enrollment struct {
	group    bool
	id       string // registration id or enrollment group id
	disabled bool
	deviceID string // individual only; "" = registration id
	hub      string // pinned hub, "" = policy
	// hubs are the linked hubs the enrollment's devices may be assigned to
	// (the service API's iotHubs); nil means every linked hub.
	hubs []string
	// policy overrides the instance's allocation policy; "" = the instance's.
	policy string
	// credPolicy issues the enrollment's devices certificates from their
	// CSRs; nil = none (a CSR is refused).
	credPolicy *credPolicy
	// X.509, individual: the device certificates (primary, then secondary).
	certs []*x509.Certificate
	// X.509, group: the CAs (primary, then secondary).
	cas []groupCA
	// Symmetric key: raw primary and (optional) secondary key.
	keys [][]byte
	// doc is the enrollment as the service API shows it, etag and times
	// included.
	doc *enrollmentDoc
}

// groupCA is one CA of an X.509 enrollment group: a CA certificate uploaded
// to the instance (ref set; it must be verified), or a signing certificate
// uploaded to the group itself (ref nil; trusted as is).
type groupCA struct {
	cert *x509.Certificate
	ref  *caCert
}

func (e *enrollment) isX509() bool { return len(e.certs) > 0 || len(e.cas) > 0 }

// name is how results and the registrations listing refer to an enrollment.
func (e *enrollment) name() string {
	if e.group {
		return "group:" + e.id
	}
	return "individual:" + e.id
}

// compile validates cfg and builds the server's view of it. Errors name the
// field, e.g. `individualEnrollments[2] (dev-3): attestation: ...`.
func compile(cfg Config) (*instance, error) {
	in := &instance{
		idScope:     cfg.IDScope,
		allocation:  cfg.Allocation,
		hubField:    cfg.CustomAllocation.HubField,
		echoPayload: cfg.CustomAllocation.EchoPayload,
		hubSet:      map[string]bool{},
		caByName:    map[string]*caCert{},
		individuals: map[string]*enrollment{},
		groups:      map[string]*enrollment{},
		counts:      map[string]*enrollmentCounts{},
	}
	if in.idScope == "" {
		in.idScope = DefaultIDScope
	}
	if strings.ContainsAny(in.idScope, "/?#% ") {
		return nil, fmt.Errorf("idScope %q: must not contain '/', '?', '#', '%%' or spaces", in.idScope)
	}
	in.hubs = cfg.Hubs
	if len(in.hubs) == 0 {
		in.hubs = DefaultHubs
	}
	for i, h := range in.hubs {
		if h == "" || strings.ContainsAny(h, "/ ") {
			return nil, fmt.Errorf("hubs[%d]: %q is not a host name", i, h)
		}
		if in.hubSet[h] {
			return nil, fmt.Errorf("hubs[%d]: %q is listed twice", i, h)
		}
		in.hubSet[h] = true
	}
	switch in.allocation {
	case "":
		in.allocation = AllocationHashed
	case AllocationHashed, AllocationEvenlyWeighted, AllocationStatic, AllocationCustom:
	default:
		return nil, fmt.Errorf("allocationPolicy %q: want %q, %q, %q or %q", in.allocation,
			AllocationHashed, AllocationEvenlyWeighted, AllocationStatic, AllocationCustom)
	}
	if in.hubField == "" {
		in.hubField = DefaultHubField
	}
	for i, c := range cfg.Certificates {
		field := fmt.Sprintf("certificates[%d] (%s)", i, c.Name)
		if c.Name == "" {
			return nil, fmt.Errorf("certificates[%d]: name is required", i)
		}
		if in.caByName[c.Name] != nil {
			return nil, fmt.Errorf("%s: name is used twice", field)
		}
		if c.File != "" {
			return nil, fmt.Errorf("%s: file %q was not read (use LoadConfig, or put the PEM text in pem)", field, c.File)
		}
		cert, err := parseOneCert(c.PEM)
		if err != nil {
			return nil, fmt.Errorf("%s.pem: %w", field, err)
		}
		ca := &caCert{name: c.Name, cert: cert, code: VerificationCode(cert)}
		ca.verified.Store(c.Verified)
		in.cas = append(in.cas, ca)
		in.caByName[c.Name] = ca
	}
	if err := in.compileCredentialPolicies(cfg.CredentialPolicies); err != nil {
		return nil, err
	}
	for i, ie := range cfg.Individual {
		field := fmt.Sprintf("individualEnrollments[%d] (%s)", i, ie.RegistrationID)
		e, err := in.compileIndividual(ie)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		key := strings.ToLower(e.id)
		if in.individuals[key] != nil {
			return nil, fmt.Errorf("%s: registrationId is used twice (ids are case-insensitive)", field)
		}
		in.individuals[key] = e
	}
	for i, g := range cfg.Groups {
		field := fmt.Sprintf("enrollmentGroups[%d] (%s)", i, g.EnrollmentGroupID)
		e, err := in.compileGroup(g)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		if in.groups[strings.ToLower(e.id)] != nil {
			return nil, fmt.Errorf("%s: enrollmentGroupId is used twice", field)
		}
		in.groups[strings.ToLower(e.id)] = e
		if e.isX509() {
			in.x509Groups = append(in.x509Groups, e)
		} else {
			in.symKeyGroups = append(in.symKeyGroups, e)
		}
	}
	start := time.Now()
	for _, e := range in.individuals {
		e.doc = in.configDoc(e, start)
		in.count(e).fromConfig = true
	}
	for _, e := range in.groups {
		e.doc = in.configDoc(e, start)
		in.count(e).fromConfig = true
	}
	if err := in.compileServiceAuth(cfg); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	for i, r := range cfg.Registrations {
		field := fmt.Sprintf("registrations[%d] (%s)", i, r.RegistrationID)
		r, err := in.compileExisting(r)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		key := strings.ToLower(r.RegistrationID)
		if seen[key] {
			return nil, fmt.Errorf("%s: registrationId is used twice (ids are case-insensitive)", field)
		}
		seen[key] = true
		in.existing = append(in.existing, r)
	}
	k, err := knobsFromConfig(cfg)
	if err != nil {
		return nil, err
	}
	in.knobs = k
	return in, nil
}

// compileExisting validates a pre-existing registration record and fills in
// the defaults that do not depend on the time.
func (in *instance) compileExisting(r ExistingRegistration) (ExistingRegistration, error) {
	if err := checkRegistrationID(r.RegistrationID); err != nil {
		return r, fmt.Errorf("registrationId: %w", err)
	}
	switch dps.Status(r.Status) {
	case dps.StatusAssigned:
		if r.AssignedHub == "" {
			return r, fmt.Errorf("assignedHub is required when status is %q: one of the linked hubs %v", r.Status, in.hubs)
		}
		if !in.hubSet[r.AssignedHub] {
			return r, fmt.Errorf("assignedHub %q is not one of the linked hubs %v", r.AssignedHub, in.hubs)
		}
		switch r.Substatus {
		case "":
			r.Substatus = dps.SubstatusInitialAssignment
		case dps.SubstatusInitialAssignment, dps.SubstatusDeviceDataMigrated, dps.SubstatusDeviceDataReset, dps.SubstatusReprovisionedToInitialAssignment:
		default:
			return r, fmt.Errorf("substatus %q: want %q, %q, %q or %q", r.Substatus, dps.SubstatusInitialAssignment,
				dps.SubstatusDeviceDataMigrated, dps.SubstatusDeviceDataReset, dps.SubstatusReprovisionedToInitialAssignment)
		}
		if r.DeviceID == "" {
			r.DeviceID = r.RegistrationID
		}
		if r.ErrorCode != 0 || r.ErrorMessage != "" {
			return r, fmt.Errorf("errorCode and errorMessage are for status %q or %q, not %q", dps.StatusFailed, dps.StatusDisabled, r.Status)
		}
	case dps.StatusFailed, dps.StatusDisabled:
		if r.AssignedHub != "" || r.DeviceID != "" || r.Substatus != "" {
			return r, fmt.Errorf("assignedHub, deviceId and substatus are for status %q, not %q", dps.StatusAssigned, r.Status)
		}
		if r.ErrorCode != 0 && (r.ErrorCode < 100000 || r.ErrorCode > 999999) {
			return r, fmt.Errorf("errorCode %d: want a 6-digit DPS error code such as %d", r.ErrorCode, dps.CodeCustomAllocation)
		}
		if r.ErrorCode == 0 {
			r.ErrorCode = dps.CodeCustomAllocation
			if dps.Status(r.Status) == dps.StatusDisabled {
				r.ErrorCode = codeEnrollmentDisabled
			}
		}
		if r.ErrorMessage == "" {
			r.ErrorMessage = "registration failed"
			if dps.Status(r.Status) == dps.StatusDisabled {
				r.ErrorMessage = "enrollment is disabled"
			}
		}
	default:
		return r, fmt.Errorf("status %q: want %q, %q or %q", r.Status, dps.StatusAssigned, dps.StatusFailed, dps.StatusDisabled)
	}
	if !r.CreatedDateTimeUTC.IsZero() && !r.LastUpdatedDateTimeUTC.IsZero() && r.LastUpdatedDateTimeUTC.Before(r.CreatedDateTimeUTC) {
		return r, fmt.Errorf("lastUpdatedDateTimeUtc %s is before createdDateTimeUtc %s",
			formatTime(r.LastUpdatedDateTimeUTC), formatTime(r.CreatedDateTimeUTC))
	}
	switch {
	case r.Enrollment == "":
		if in.individuals[strings.ToLower(r.RegistrationID)] != nil {
			r.Enrollment = "individual:" + in.individuals[strings.ToLower(r.RegistrationID)].id
		}
	case strings.HasPrefix(r.Enrollment, "individual:") && len(r.Enrollment) > len("individual:"),
		strings.HasPrefix(r.Enrollment, "group:") && len(r.Enrollment) > len("group:"):
	default:
		return r, fmt.Errorf("enrollment %q: want \"individual:<registrationId>\" or \"group:<enrollmentGroupId>\"", r.Enrollment)
	}
	return r, nil
}

func (in *instance) compileIndividual(ie IndividualEnrollment) (*enrollment, error) {
	if err := checkRegistrationID(ie.RegistrationID); err != nil {
		return nil, fmt.Errorf("registrationId: %w", err)
	}
	e := &enrollment{id: ie.RegistrationID, deviceID: ie.DeviceID}
	if err := in.commonFields(e, ie.IoTHub, ie.ProvisioningStatus); err != nil {
		return nil, err
	}
	cp, err := in.credentialPolicy(ie.CredentialPolicyName)
	if err != nil {
		return nil, err
	}
	e.credPolicy = cp
	a := ie.Attestation
	switch {
	case a.X509 != nil && a.SymmetricKey != nil:
		return nil, errors.New("attestation: set x509 or symmetricKey, not both")
	case a.X509 != nil:
		x := a.X509
		if x.CACertificate != "" || x.SigningCertificate != "" || x.SigningCertificateFile != "" {
			return nil, errors.New("attestation.x509: an individual enrollment takes the device certificate (certificate or certificateFile); caCertificate and signingCertificate are for enrollment groups")
		}
		if x.CertificateFile != "" {
			return nil, fmt.Errorf("attestation.x509.certificateFile %q was not read (use LoadConfig, or put the PEM text in certificate)", x.CertificateFile)
		}
		cert, err := parseOneCert(x.Certificate)
		if err != nil {
			return nil, fmt.Errorf("attestation.x509.certificate: %w", err)
		}
		// DPS takes an X.509 device's registration id from its CN.
		if !strings.EqualFold(cert.Subject.CommonName, ie.RegistrationID) {
			return nil, fmt.Errorf("attestation.x509.certificate: subject CN %q does not match the registration id (DPS requires them to be equal)", cert.Subject.CommonName)
		}
		e.certs = []*x509.Certificate{cert}
	case a.SymmetricKey != nil:
		keys, err := decodeKeys(*a.SymmetricKey)
		if err != nil {
			return nil, err
		}
		e.keys = keys
	default:
		return nil, errors.New("attestation: set x509 (certificate) or symmetricKey (primaryKey)")
	}
	return e, nil
}

func (in *instance) compileGroup(g EnrollmentGroup) (*enrollment, error) {
	if strings.TrimSpace(g.EnrollmentGroupID) == "" {
		return nil, errors.New("enrollmentGroupId is required")
	}
	e := &enrollment{group: true, id: g.EnrollmentGroupID}
	if err := in.commonFields(e, g.IoTHub, g.ProvisioningStatus); err != nil {
		return nil, err
	}
	cp, err := in.credentialPolicy(g.CredentialPolicyName)
	if err != nil {
		return nil, err
	}
	e.credPolicy = cp
	a := g.Attestation
	switch {
	case a.X509 != nil && a.SymmetricKey != nil:
		return nil, errors.New("attestation: set x509 or symmetricKey, not both")
	case a.X509 != nil:
		x := a.X509
		if x.Certificate != "" || x.CertificateFile != "" {
			return nil, errors.New("attestation.x509: a group takes a CA (caCertificate or signingCertificate); certificate is for individual enrollments")
		}
		if x.SigningCertificateFile != "" {
			return nil, fmt.Errorf("attestation.x509.signingCertificateFile %q was not read (use LoadConfig, or put the PEM text in signingCertificate)", x.SigningCertificateFile)
		}
		switch {
		case x.CACertificate != "" && x.SigningCertificate != "":
			return nil, errors.New("attestation.x509: set caCertificate or signingCertificate, not both")
		case x.CACertificate != "":
			ca := in.caByName[x.CACertificate]
			if ca == nil {
				return nil, fmt.Errorf("attestation.x509.caCertificate: no certificate named %q in certificates", x.CACertificate)
			}
			e.cas = []groupCA{{cert: ca.cert, ref: ca}}
		case x.SigningCertificate != "":
			cert, err := parseOneCert(x.SigningCertificate)
			if err != nil {
				return nil, fmt.Errorf("attestation.x509.signingCertificate: %w", err)
			}
			e.cas = []groupCA{{cert: cert}}
		default:
			return nil, errors.New("attestation.x509: set caCertificate (a name from certificates) or signingCertificate (PEM)")
		}
	case a.SymmetricKey != nil:
		keys, err := decodeKeys(*a.SymmetricKey)
		if err != nil {
			return nil, err
		}
		e.keys = keys
	default:
		return nil, errors.New("attestation: set x509 (caCertificate or signingCertificate) or symmetricKey (primaryKey)")
	}
	return e, nil
}

func (in *instance) commonFields(e *enrollment, hub, status string) error {
	if hub != "" && !in.hubSet[hub] {
		return fmt.Errorf("iotHub %q is not one of the linked hubs %v", hub, in.hubs)
	}
	e.hub = hub
	switch status {
	case "", ProvisioningEnabled:
	case ProvisioningDisabled:
		e.disabled = true
	default:
		return fmt.Errorf("provisioningStatus %q: want %q or %q", status, ProvisioningEnabled, ProvisioningDisabled)
	}
	return nil
}

func decodeKeys(sk SymmetricKeyAttestation) ([][]byte, error) {
	var keys [][]byte
	for _, k := range []struct{ name, v string }{{"primaryKey", sk.PrimaryKey}, {"secondaryKey", sk.SecondaryKey}} {
		if k.v == "" {
			if k.name == "primaryKey" {
				return nil, errors.New("attestation.symmetricKey.primaryKey is required")
			}
			continue
		}
		b, err := base64.StdEncoding.DecodeString(k.v)
		if err != nil {
			// Never echo the key itself.
			return nil, fmt.Errorf("attestation.symmetricKey.%s is not valid base64", k.name)
		}
		if len(b) < 16 || len(b) > 64 {
			return nil, fmt.Errorf("attestation.symmetricKey.%s is %d bytes; DPS keys are 16 to 64 bytes", k.name, len(b))
		}
		keys = append(keys, b)
	}
	return keys, nil
}

func parseOneCert(pemText string) (*x509.Certificate, error) {
	if strings.TrimSpace(pemText) == "" {
		return nil, errors.New("no certificate given")
	}
	cs, err := certs.ParseCertsPEM([]byte(pemText))
	if err != nil {
		return nil, err
	}
	if len(cs) != 1 {
		return nil, fmt.Errorf("want exactly one certificate, found %d", len(cs))
	}
	return cs[0], nil
}

// checkRegistrationID applies the DPS registration id rules as the service
// does: up to 128 characters of letters, digits and - . _ : (ids are
// case-insensitive, so upper case is accepted).
func checkRegistrationID(id string) error {
	if id == "" {
		return errors.New("is empty")
	}
	if len(id) > 128 {
		return fmt.Errorf("%q is longer than 128 characters", id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == ':'
		if !ok {
			return fmt.Errorf("%q has %q at position %d; allowed: letters, digits, - . _ :", id, c, i+1)
		}
	}
	return nil
}

// knobsFromConfig extracts and validates the run-time tunables.
func knobsFromConfig(cfg Config) (Knobs, error) {
	k := Knobs{
		RetryAfterSeconds: DefaultRetryAfterSeconds,
		AssignmentDelay:   cfg.AssignmentDelay,
		Quotas:            cfg.Quotas,
		Faults:            cfg.Faults,
	}
	if cfg.RetryAfterSeconds != nil {
		k.RetryAfterSeconds = *cfg.RetryAfterSeconds
	}
	k.LookupWhileAssigning = cfg.LookupWhileAssigning
	k.IssuedChainEveryPoll = cfg.IssuedChainEveryPoll
	if err := k.validate(); err != nil {
		return k, err
	}
	k.normalize()
	return k, nil
}
