package dpssim

import (
	"bytes"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
)

// The service API's wire types (api-version 2021-10-01: IndividualEnrollment,
// EnrollmentGroup, AttestationMechanism, DeviceRegistrationState, the bulk
// operation and its result). One document type serves individual enrollments
// and groups; the fields of the other kind stay empty and are omitted.

// enrollmentDoc is an IndividualEnrollment or an EnrollmentGroup.
type enrollmentDoc struct {
	RegistrationID             string                `json:"registrationId,omitempty"`
	EnrollmentGroupID          string                `json:"enrollmentGroupId,omitempty"`
	DeviceID                   string                `json:"deviceId,omitempty"`
	RegistrationState          *registrationStateDoc `json:"registrationState,omitempty"`
	OptionalDeviceInformation  json.RawMessage       `json:"optionalDeviceInformation,omitempty"`
	Attestation                *attestationDoc       `json:"attestation"`
	Capabilities               json.RawMessage       `json:"capabilities,omitempty"`
	IoTHubHostName             string                `json:"iotHubHostName,omitempty"`
	InitialTwin                json.RawMessage       `json:"initialTwin,omitempty"`
	ETag                       string                `json:"etag,omitempty"`
	ProvisioningStatus         string                `json:"provisioningStatus,omitempty"`
	ReprovisionPolicy          *reprovisionPolicyDoc `json:"reprovisionPolicy,omitempty"`
	CreatedDateTimeUTC         string                `json:"createdDateTimeUtc,omitempty"`
	LastUpdatedDateTimeUTC     string                `json:"lastUpdatedDateTimeUtc,omitempty"`
	AllocationPolicy           string                `json:"allocationPolicy,omitempty"`
	IoTHubs                    []string              `json:"iotHubs,omitempty"`
	CustomAllocationDefinition json.RawMessage       `json:"customAllocationDefinition,omitempty"`
	// CredentialPolicyName links a credential policy that issues the
	// devices certificates from their CSRs (service API 2025-07-01-preview).
	CredentialPolicyName string `json:"credentialPolicyName,omitempty"`
}

// attestationDoc is an AttestationMechanism.
type attestationDoc struct {
	Type         string              `json:"type"`
	TPM          json.RawMessage     `json:"tpm,omitempty"`
	X509         *x509AttestationDoc `json:"x509,omitempty"`
	SymmetricKey *symmetricKeyDoc    `json:"symmetricKey,omitempty"`
}

type x509AttestationDoc struct {
	ClientCertificates  *x509CertificatesDoc `json:"clientCertificates,omitempty"`
	SigningCertificates *x509CertificatesDoc `json:"signingCertificates,omitempty"`
	CAReferences        *x509CAReferencesDoc `json:"caReferences,omitempty"`
}

type x509CertificatesDoc struct {
	Primary   *x509CertificateWithInfo `json:"primary,omitempty"`
	Secondary *x509CertificateWithInfo `json:"secondary,omitempty"`
}

// x509CertificateWithInfo carries a certificate in requests; DPS answers
// with its info only.
type x509CertificateWithInfo struct {
	Certificate string                   `json:"certificate,omitempty"`
	Info        *dps.X509CertificateInfo `json:"info,omitempty"`
}

type x509CAReferencesDoc struct {
	Primary   string `json:"primary,omitempty"`
	Secondary string `json:"secondary,omitempty"`
}

type symmetricKeyDoc struct {
	PrimaryKey   string `json:"primaryKey,omitempty"`
	SecondaryKey string `json:"secondaryKey,omitempty"`
}

type reprovisionPolicyDoc struct {
	UpdateHubAssignment *bool `json:"updateHubAssignment,omitempty"`
	MigrateDeviceData   *bool `json:"migrateDeviceData,omitempty"`
}

// registrationStateDoc is the service API's DeviceRegistrationState: the
// device API's registration state without the attestation details.
type registrationStateDoc struct {
	RegistrationID         string          `json:"registrationId"`
	CreatedDateTimeUTC     string          `json:"createdDateTimeUtc,omitempty"`
	AssignedHub            string          `json:"assignedHub,omitempty"`
	DeviceID               string          `json:"deviceId,omitempty"`
	Status                 dps.Status      `json:"status"`
	Substatus              string          `json:"substatus,omitempty"`
	ErrorCode              int             `json:"errorCode,omitempty"`
	ErrorMessage           string          `json:"errorMessage,omitempty"`
	LastUpdatedDateTimeUTC string          `json:"lastUpdatedDateTimeUtc,omitempty"`
	ETag                   string          `json:"etag,omitempty"`
	Payload                json.RawMessage `json:"payload,omitempty"`
}

func stateDoc(r *dps.DeviceRegistrationResult) *registrationStateDoc {
	return &registrationStateDoc{
		RegistrationID:         r.RegistrationID,
		CreatedDateTimeUTC:     r.CreatedDateTimeUTC,
		AssignedHub:            r.AssignedHub,
		DeviceID:               r.DeviceID,
		Status:                 r.Status,
		Substatus:              r.Substatus,
		ErrorCode:              r.ErrorCode,
		ErrorMessage:           r.ErrorMessage,
		LastUpdatedDateTimeUTC: r.LastUpdatedDateTimeUTC,
		ETag:                   r.ETag,
		Payload:                r.Payload,
	}
}

// bulkOperationDoc is BulkEnrollmentOperation or BulkEnrollmentGroupOperation.
type bulkOperationDoc struct {
	Mode             string            `json:"mode"`
	Enrollments      []json.RawMessage `json:"enrollments"`
	EnrollmentGroups []json.RawMessage `json:"enrollmentGroups"`
}

// bulkResultDoc is BulkEnrollmentOperationResult (or the group one).
type bulkResultDoc struct {
	IsSuccessful bool           `json:"isSuccessful"`
	Errors       []bulkErrorDoc `json:"errors"`
}

type bulkErrorDoc struct {
	RegistrationID    string `json:"registrationId,omitempty"`
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
	ErrorCode         int    `json:"errorCode"`
	ErrorStatus       string `json:"errorStatus"`
}

// Bulk operation modes.
const (
	bulkCreate            = "create"
	bulkUpdate            = "update"
	bulkUpdateIfMatchETag = "updateIfMatchETag"
	bulkDelete            = "delete"
)

// maxBulkItems is the most enrollments one bulk call may carry.
const maxBulkItems = 10

// Attestation types on the wire.
const (
	attestationX509         = "x509"
	attestationSymmetricKey = "symmetricKey"
	attestationTPM          = "tpm"
	attestationNone         = "none"
)

// generatedKeyBytes is the size of the keys DPS generates for a symmetric
// key enrollment created without keys (64 bytes, 88 base64 characters).
const generatedKeyBytes = 64

// present reports whether a raw JSON member was sent with a value.
func present(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && !bytes.Equal(t, []byte("null"))
}

// jsonObject checks that an optional member is a JSON object and returns it
// compacted (nil when absent or null).
func jsonObject(name string, raw json.RawMessage) (json.RawMessage, error) {
	if !present(raw) {
		return nil, nil
	}
	t := bytes.TrimSpace(raw)
	if t[0] != '{' {
		return nil, fmt.Errorf("%s must be a JSON object", name)
	}
	var b bytes.Buffer
	if err := json.Compact(&b, t); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return b.Bytes(), nil
}

// allocationPolicies maps the service API's allocationPolicy values to the
// simulator's policies. The simulator has no geography: geoLatency hashes.
var allocationPolicies = map[string]string{
	"hashed":     AllocationHashed,
	"geoLatency": AllocationHashed,
	"static":     AllocationStatic,
	"custom":     AllocationCustom,
}

// wirePolicy is the allocationPolicy the service API shows for the
// instance's policy.
func wirePolicy(instancePolicy string) string {
	switch instancePolicy {
	case AllocationStatic:
		return "static"
	case AllocationCustom:
		return "custom"
	}
	return "hashed"
}

// compileDoc validates a service API enrollment (group when group is set)
// and compiles it through the same code as the configuration file's
// enrollments. pathID is the id in the request path ("" in bulk calls).
// Symmetric keys left out are generated, as DPS does. The returned
// enrollment's doc is what the API answers, without etag and times.
func (in *instance) compileDoc(group bool, pathID string, d *enrollmentDoc) (*enrollment, error) {
	id := d.RegistrationID
	idName := "registrationId"
	if group {
		id, idName = d.EnrollmentGroupID, "enrollmentGroupId"
	}
	switch {
	case id == "" && pathID != "":
		id = pathID
	case id == "":
		return nil, fmt.Errorf("%s is required", idName)
	case pathID != "" && !strings.EqualFold(id, pathID):
		return nil, fmt.Errorf("%s %q in the body does not match %q in the path", idName, id, pathID)
	}
	if err := checkRegistrationID(id); err != nil {
		return nil, fmt.Errorf("%s: %w", idName, err)
	}
	if d.Attestation == nil {
		return nil, errors.New("attestation is required")
	}
	hubs, pinned, policy, err := in.hubFields(d)
	if err != nil {
		return nil, err
	}
	att, extra, err := wireAttestation(group, d.Attestation)
	if err != nil {
		return nil, err
	}
	status := d.ProvisioningStatus
	var e *enrollment
	if group {
		if d.DeviceID != "" {
			return nil, errors.New("deviceId is for individual enrollments, not enrollment groups")
		}
		e, err = in.compileGroup(EnrollmentGroup{EnrollmentGroupID: id, Attestation: att, IoTHub: pinned, ProvisioningStatus: status,
			CredentialPolicyName: d.CredentialPolicyName})
	} else {
		e, err = in.compileIndividual(IndividualEnrollment{RegistrationID: id, Attestation: att, DeviceID: d.DeviceID, IoTHub: pinned, ProvisioningStatus: status,
			CredentialPolicyName: d.CredentialPolicyName})
	}
	if err != nil {
		return nil, err
	}
	if extra != nil {
		if err := in.addSecondary(e, extra); err != nil {
			return nil, err
		}
	}
	e.hubs, e.policy = hubs, policy

	out := &enrollmentDoc{
		DeviceID:           d.DeviceID,
		IoTHubHostName:     d.IoTHubHostName,
		ProvisioningStatus: ProvisioningEnabled,
		AllocationPolicy:   d.AllocationPolicy,
		IoTHubs:            append([]string(nil), d.IoTHubs...),
	}
	if e.credPolicy != nil {
		out.CredentialPolicyName = e.credPolicy.name
	}
	if group {
		out.EnrollmentGroupID = id
	} else {
		out.RegistrationID = id
	}
	if e.disabled {
		out.ProvisioningStatus = ProvisioningDisabled
	}
	if out.AllocationPolicy == "" {
		out.AllocationPolicy = wirePolicy(in.allocation)
	}
	for _, f := range []struct {
		name string
		in   json.RawMessage
		out  *json.RawMessage
	}{
		{"capabilities", d.Capabilities, &out.Capabilities},
		{"initialTwin", d.InitialTwin, &out.InitialTwin},
		{"optionalDeviceInformation", d.OptionalDeviceInformation, &out.OptionalDeviceInformation},
		{"customAllocationDefinition", d.CustomAllocationDefinition, &out.CustomAllocationDefinition},
	} {
		v, err := jsonObject(f.name, f.in)
		if err != nil {
			return nil, err
		}
		*f.out = v
	}
	if group && out.OptionalDeviceInformation != nil {
		return nil, errors.New("optionalDeviceInformation is for individual enrollments, not enrollment groups")
	}
	if out.Capabilities == nil {
		out.Capabilities = json.RawMessage(`{"iotEdge":false}`)
	}
	out.ReprovisionPolicy = defaultReprovision(d.ReprovisionPolicy)
	out.Attestation = in.attestationDocFor(e)
	e.doc = out
	return e, nil
}

func defaultReprovision(p *reprovisionPolicyDoc) *reprovisionPolicyDoc {
	t := true
	out := &reprovisionPolicyDoc{UpdateHubAssignment: &t, MigrateDeviceData: &t}
	if p != nil {
		if p.UpdateHubAssignment != nil {
			v := *p.UpdateHubAssignment
			out.UpdateHubAssignment = &v
		}
		if p.MigrateDeviceData != nil {
			v := *p.MigrateDeviceData
			out.MigrateDeviceData = &v
		}
	}
	return out
}

// hubFields checks iotHubs, iotHubHostName and allocationPolicy and returns
// the enrollment's hub subset, pinned hub and policy override.
func (in *instance) hubFields(d *enrollmentDoc) (hubs []string, pinned, policy string, err error) {
	for i, h := range d.IoTHubs {
		if !in.hubSet[h] {
			return nil, "", "", fmt.Errorf("iotHubs[%d] %q is not a linked IoT hub %v", i, h, in.hubs)
		}
		if contains(hubs, h) {
			return nil, "", "", fmt.Errorf("iotHubs[%d] %q is listed twice", i, h)
		}
		hubs = append(hubs, h)
	}
	if d.IoTHubHostName != "" {
		if !in.hubSet[d.IoTHubHostName] {
			return nil, "", "", fmt.Errorf("iotHubHostName %q is not a linked IoT hub %v", d.IoTHubHostName, in.hubs)
		}
		if len(hubs) == 0 {
			pinned = d.IoTHubHostName
		}
	}
	if d.AllocationPolicy != "" {
		p, ok := allocationPolicies[d.AllocationPolicy]
		if !ok {
			return nil, "", "", fmt.Errorf("allocationPolicy %q: want hashed, geoLatency, static or custom", d.AllocationPolicy)
		}
		policy = p
	}
	return hubs, pinned, policy, nil
}

// secondary is the secondary certificate or CA of an X.509 attestation,
// added after the primary was compiled.
type secondary struct {
	cert  *x509.Certificate // clientCertificates or signingCertificates
	caRef string            // caReferences
}

// wireAttestation turns a service API attestation into the configuration
// file's form (the primary mechanism) plus the X.509 secondary, if any.
func wireAttestation(group bool, a *attestationDoc) (Attestation, *secondary, error) {
	switch {
	case strings.EqualFold(a.Type, attestationSymmetricKey):
		sk := symmetricKeyDoc{}
		if a.SymmetricKey != nil {
			sk = *a.SymmetricKey
		}
		for _, k := range []*string{&sk.PrimaryKey, &sk.SecondaryKey} {
			if *k == "" {
				// DPS generates the keys a symmetric key enrollment is created without.
				b := make([]byte, generatedKeyBytes)
				if _, err := rand.Read(b); err != nil {
					return Attestation{}, nil, err
				}
				*k = base64.StdEncoding.EncodeToString(b)
			}
		}
		return Attestation{SymmetricKey: &SymmetricKeyAttestation{PrimaryKey: sk.PrimaryKey, SecondaryKey: sk.SecondaryKey}}, nil, nil
	case strings.EqualFold(a.Type, attestationX509):
		x := a.X509
		if x == nil {
			return Attestation{}, nil, errors.New("attestation.x509 is required for attestation type x509")
		}
		return wireX509(group, x)
	case strings.EqualFold(a.Type, attestationTPM):
		return Attestation{}, nil, errors.New("attestation type tpm is not supported by this simulator; use x509 or symmetricKey")
	case a.Type == "" || strings.EqualFold(a.Type, attestationNone):
		return Attestation{}, nil, errors.New("attestation.type is required: x509 or symmetricKey")
	}
	return Attestation{}, nil, fmt.Errorf("attestation.type %q: want x509 or symmetricKey", a.Type)
}

func wireX509(group bool, x *x509AttestationDoc) (Attestation, *secondary, error) {
	cert := func(field string, c *x509CertificateWithInfo) (*x509.Certificate, error) {
		if c == nil || strings.TrimSpace(c.Certificate) == "" {
			return nil, fmt.Errorf("attestation.x509.%s.certificate is required", field)
		}
		parsed, err := certFromWire(c.Certificate)
		if err != nil {
			return nil, fmt.Errorf("attestation.x509.%s.certificate: %w", field, err)
		}
		return parsed, nil
	}
	var sec *secondary
	if !group {
		if x.SigningCertificates != nil || x.CAReferences != nil {
			return Attestation{}, nil, errors.New("attestation.x509: an individual enrollment takes clientCertificates; signingCertificates and caReferences are for enrollment groups")
		}
		if x.ClientCertificates == nil {
			return Attestation{}, nil, errors.New("attestation.x509.clientCertificates is required")
		}
		primary, err := cert("clientCertificates.primary", x.ClientCertificates.Primary)
		if err != nil {
			return Attestation{}, nil, err
		}
		if x.ClientCertificates.Secondary != nil {
			c, err := cert("clientCertificates.secondary", x.ClientCertificates.Secondary)
			if err != nil {
				return Attestation{}, nil, err
			}
			sec = &secondary{cert: c}
		}
		return Attestation{X509: &X509Attestation{Certificate: string(certs.CertPEM(primary))}}, sec, nil
	}
	if x.ClientCertificates != nil {
		return Attestation{}, nil, errors.New("attestation.x509: an enrollment group takes signingCertificates or caReferences; clientCertificates are for individual enrollments")
	}
	switch {
	case x.SigningCertificates != nil && x.CAReferences != nil:
		return Attestation{}, nil, errors.New("attestation.x509: set signingCertificates or caReferences, not both")
	case x.SigningCertificates != nil:
		primary, err := cert("signingCertificates.primary", x.SigningCertificates.Primary)
		if err != nil {
			return Attestation{}, nil, err
		}
		if x.SigningCertificates.Secondary != nil {
			c, err := cert("signingCertificates.secondary", x.SigningCertificates.Secondary)
			if err != nil {
				return Attestation{}, nil, err
			}
			sec = &secondary{cert: c}
		}
		return Attestation{X509: &X509Attestation{SigningCertificate: string(certs.CertPEM(primary))}}, sec, nil
	case x.CAReferences != nil:
		if x.CAReferences.Primary == "" {
			return Attestation{}, nil, errors.New("attestation.x509.caReferences.primary is required")
		}
		if x.CAReferences.Secondary != "" {
			sec = &secondary{caRef: x.CAReferences.Secondary}
		}
		return Attestation{X509: &X509Attestation{CACertificate: x.CAReferences.Primary}}, sec, nil
	}
	return Attestation{}, nil, errors.New("attestation.x509: set signingCertificates (a CA certificate) or caReferences (the name of a CA certificate of the instance)")
}

// addSecondary adds an X.509 secondary certificate or CA to a compiled
// enrollment, checked like the primary.
func (in *instance) addSecondary(e *enrollment, sec *secondary) error {
	switch {
	case !e.group:
		if !strings.EqualFold(sec.cert.Subject.CommonName, e.id) {
			return fmt.Errorf("attestation.x509.clientCertificates.secondary.certificate: subject CN %q does not match the registration id (DPS requires them to be equal)", sec.cert.Subject.CommonName)
		}
		e.certs = append(e.certs, sec.cert)
	case sec.caRef != "":
		ca := in.caByName[sec.caRef]
		if ca == nil {
			return fmt.Errorf("attestation.x509.caReferences.secondary: no CA certificate named %q", sec.caRef)
		}
		e.cas = append(e.cas, groupCA{cert: ca.cert, ref: ca})
	default:
		e.cas = append(e.cas, groupCA{cert: sec.cert})
	}
	return nil
}

// certFromWire reads one certificate as SDKs send it: PEM, the one-line
// "-----BEGIN CERTIFICATE-----<base64 DER>-----END CERTIFICATE-----" the C#
// SDK writes, base64 of PEM (the C SDK) or base64 of DER.
func certFromWire(s string) (*x509.Certificate, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "-----BEGIN") {
		b, err := base64.StdEncoding.DecodeString(stripSpace(s))
		if err != nil {
			return nil, errors.New("not PEM, base64 PEM or base64 DER")
		}
		if bytes.Contains(b, []byte("-----BEGIN")) {
			return certFromWire(string(b))
		}
		c, err := x509.ParseCertificate(b)
		if err != nil {
			return nil, fmt.Errorf("base64 DER certificate: %w", err)
		}
		return c, nil
	}
	if cs, err := certs.ParseCertsPEM([]byte(s)); err == nil {
		if len(cs) != 1 {
			return nil, fmt.Errorf("want exactly one certificate, found %d", len(cs))
		}
		return cs[0], nil
	}
	// One line: take the base64 between the markers.
	const begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i || strings.Count(s, begin) != 1 {
		return nil, errors.New("want exactly one PEM certificate")
	}
	der, err := base64.StdEncoding.DecodeString(stripSpace(s[i+len(begin) : j]))
	if err != nil {
		return nil, errors.New("PEM certificate body is not base64")
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("PEM certificate: %w", err)
	}
	return c, nil
}

func stripSpace(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n':
			return -1
		}
		return r
	}, s)
}

// attestationDocFor is the attestation the service API shows for a compiled
// enrollment: certificate info (not the certificates), CA names, keys.
func (in *instance) attestationDocFor(e *enrollment) *attestationDoc {
	if !e.isX509() {
		sk := &symmetricKeyDoc{}
		if len(e.keys) > 0 {
			sk.PrimaryKey = base64.StdEncoding.EncodeToString(e.keys[0])
		}
		if len(e.keys) > 1 {
			sk.SecondaryKey = base64.StdEncoding.EncodeToString(e.keys[1])
		}
		return &attestationDoc{Type: attestationSymmetricKey, SymmetricKey: sk}
	}
	certsDoc := func(list []*x509.Certificate) *x509CertificatesDoc {
		d := &x509CertificatesDoc{}
		for i, c := range list {
			w := &x509CertificateWithInfo{Info: certInfo(c)}
			if i == 0 {
				d.Primary = w
			} else {
				d.Secondary = w
			}
		}
		return d
	}
	x := &x509AttestationDoc{}
	switch {
	case !e.group:
		x.ClientCertificates = certsDoc(e.certs)
	case e.cas[0].ref != nil:
		x.CAReferences = &x509CAReferencesDoc{Primary: e.cas[0].ref.name}
		if len(e.cas) > 1 && e.cas[1].ref != nil {
			x.CAReferences.Secondary = e.cas[1].ref.name
		}
	default:
		var list []*x509.Certificate
		for _, c := range e.cas {
			list = append(list, c.cert)
		}
		x.SigningCertificates = certsDoc(list)
	}
	return &attestationDoc{Type: attestationX509, X509: x}
}

// configDoc is the service API view of an enrollment from the
// configuration file, created at start.
func (in *instance) configDoc(e *enrollment, start time.Time) *enrollmentDoc {
	d := &enrollmentDoc{
		DeviceID:               e.deviceID,
		Attestation:            in.attestationDocFor(e),
		Capabilities:           json.RawMessage(`{"iotEdge":false}`),
		ETag:                   newETag(),
		ProvisioningStatus:     ProvisioningEnabled,
		ReprovisionPolicy:      defaultReprovision(nil),
		CreatedDateTimeUTC:     formatTime(start),
		LastUpdatedDateTimeUTC: formatTime(start),
		AllocationPolicy:       wirePolicy(in.allocation),
	}
	if e.credPolicy != nil {
		d.CredentialPolicyName = e.credPolicy.name
	}
	if e.group {
		d.EnrollmentGroupID = e.id
	} else {
		d.RegistrationID = e.id
	}
	if e.disabled {
		d.ProvisioningStatus = ProvisioningDisabled
	}
	if e.hub != "" {
		d.AllocationPolicy = "static"
		d.IoTHubs = []string{e.hub}
	}
	return d
}
