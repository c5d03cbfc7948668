package dpsservice

import (
	"encoding/json"
)

// DefaultAPIVersion is the service API version this package speaks: the
// stable 2021-10-01 REST API (Azure/azure-rest-api-specs,
// specification/deviceprovisioningservices/data-plane/…/stable/2021-10-01/service.json).
const DefaultAPIVersion = "2021-10-01"

// CertificateIssuanceAPIVersion is the service api-version (a preview)
// whose enrollments carry credentialPolicyName, for devices DPS issues
// certificates to at registration.
const CertificateIssuanceAPIVersion = "2025-07-01-preview"

// MaxBulkItems is the most enrollments (or enrollment groups) one bulk
// operation may carry; DPS refuses larger ones.
const MaxBulkItems = 10

// Attestation types (AttestationMechanism.type).
const (
	AttestationNone         = "none"
	AttestationTPM          = "tpm"
	AttestationX509         = "x509"
	AttestationSymmetricKey = "symmetricKey"
)

// ProvisioningStatus is an enrollment's provisioningStatus: "enabled" (the
// service's default) or "disabled".
type ProvisioningStatus string

// The provisioning statuses.
const (
	StatusEnabled  ProvisioningStatus = "enabled"
	StatusDisabled ProvisioningStatus = "disabled"
)

// AllocationPolicy is an enrollment's allocationPolicy.
type AllocationPolicy string

// The allocation policies.
const (
	AllocationHashed     AllocationPolicy = "hashed"
	AllocationGeoLatency AllocationPolicy = "geoLatency"
	AllocationStatic     AllocationPolicy = "static"
	AllocationCustom     AllocationPolicy = "custom"
)

// BulkMode is the mode of a bulk enrollment operation.
type BulkMode string

// The bulk modes.
const (
	// BulkCreate creates each item; an item whose id exists fails with a
	// 409 error of its own and the existing record is left as it is.
	BulkCreate BulkMode = "create"
	// BulkUpdate creates or replaces each item.
	BulkUpdate BulkMode = "update"
	// BulkUpdateIfMatchETag replaces each item only if its etag matches
	// the stored record's (412 otherwise).
	BulkUpdateIfMatchETag BulkMode = "updateIfMatchETag"
	// BulkDelete deletes each item.
	BulkDelete BulkMode = "delete"
)

// IndividualEnrollment is the enrollment record of one device
// (IndividualEnrollment in the REST spec). Read-only fields are filled in by
// the service and ignored when sent.
type IndividualEnrollment struct {
	// RegistrationID identifies the device; required.
	RegistrationID string `json:"registrationId"`
	// DeviceID is the desired IoT Hub device id; "" lets DPS use the
	// registration id.
	DeviceID string `json:"deviceId,omitempty"`
	// RegistrationState is the device's registration (read-only).
	RegistrationState *DeviceRegistrationState `json:"registrationState,omitempty"`
	// OptionalDeviceInformation is a TwinCollection, kept as JSON.
	OptionalDeviceInformation json.RawMessage `json:"optionalDeviceInformation,omitempty"`
	// Attestation is how the device proves its identity; required.
	Attestation *AttestationMechanism `json:"attestation"`
	// Capabilities says whether the device is an IoT Edge device.
	Capabilities *DeviceCapabilities `json:"capabilities,omitempty"`
	// IoTHubHostName is the IoT hub of the enrollment (legacy, read by DPS
	// only when IoTHubs is empty).
	IoTHubHostName string `json:"iotHubHostName,omitempty"`
	// InitialTwin is the device twin the hub starts from.
	InitialTwin *InitialTwin `json:"initialTwin,omitempty"`
	// ETag is the record's entity tag (set by the service).
	ETag string `json:"etag,omitempty"`
	// ProvisioningStatus is enabled (default) or disabled.
	ProvisioningStatus ProvisioningStatus `json:"provisioningStatus,omitempty"`
	// ReprovisionPolicy is what happens when the device registers again.
	ReprovisionPolicy *ReprovisionPolicy `json:"reprovisionPolicy,omitempty"`
	// CredentialPolicyName names the credential policy (Azure Device
	// Registry) that issues the device a certificate from the CSR it sends
	// at registration; service api-version CertificateIssuanceAPIVersion.
	CredentialPolicyName string `json:"credentialPolicyName,omitempty"`
	// CreatedDateTimeUTC and LastUpdatedDateTimeUTC are read-only, kept as
	// the service wrote them.
	CreatedDateTimeUTC     string `json:"createdDateTimeUtc,omitempty"`
	LastUpdatedDateTimeUTC string `json:"lastUpdatedDateTimeUtc,omitempty"`
	// AllocationPolicy overrides the instance's allocation policy.
	AllocationPolicy AllocationPolicy `json:"allocationPolicy,omitempty"`
	// IoTHubs lists the linked hubs (host names) the device may be
	// allocated to; empty means all of them.
	IoTHubs []string `json:"iotHubs,omitempty"`
	// CustomAllocationDefinition names the webhook of a custom allocation.
	CustomAllocationDefinition *CustomAllocationDefinition `json:"customAllocationDefinition,omitempty"`
}

// EnrollmentGroup admits every device that proves membership: a
// certificate chaining to its CA, or a key derived from its group key.
type EnrollmentGroup struct {
	// EnrollmentGroupID names the group; required.
	EnrollmentGroupID string `json:"enrollmentGroupId"`
	// Attestation is x509 (signingCertificates or caReferences) or
	// symmetricKey; required.
	Attestation                *AttestationMechanism       `json:"attestation"`
	Capabilities               *DeviceCapabilities         `json:"capabilities,omitempty"`
	IoTHubHostName             string                      `json:"iotHubHostName,omitempty"`
	InitialTwin                *InitialTwin                `json:"initialTwin,omitempty"`
	ETag                       string                      `json:"etag,omitempty"`
	ProvisioningStatus         ProvisioningStatus          `json:"provisioningStatus,omitempty"`
	ReprovisionPolicy          *ReprovisionPolicy          `json:"reprovisionPolicy,omitempty"`
	CreatedDateTimeUTC         string                      `json:"createdDateTimeUtc,omitempty"`
	LastUpdatedDateTimeUTC     string                      `json:"lastUpdatedDateTimeUtc,omitempty"`
	AllocationPolicy           AllocationPolicy            `json:"allocationPolicy,omitempty"`
	IoTHubs                    []string                    `json:"iotHubs,omitempty"`
	CustomAllocationDefinition *CustomAllocationDefinition `json:"customAllocationDefinition,omitempty"`
	// CredentialPolicyName: see IndividualEnrollment.CredentialPolicyName.
	CredentialPolicyName string `json:"credentialPolicyName,omitempty"`
}

// DeviceRegistrationState is a device's registration record at DPS (all
// read-only).
type DeviceRegistrationState struct {
	RegistrationID         string          `json:"registrationId,omitempty"`
	CreatedDateTimeUTC     string          `json:"createdDateTimeUtc,omitempty"`
	AssignedHub            string          `json:"assignedHub,omitempty"`
	DeviceID               string          `json:"deviceId,omitempty"`
	Status                 string          `json:"status,omitempty"` // unassigned, assigning, assigned, failed, disabled
	Substatus              string          `json:"substatus,omitempty"`
	ErrorCode              int             `json:"errorCode,omitempty"`
	ErrorMessage           string          `json:"errorMessage,omitempty"`
	LastUpdatedDateTimeUTC string          `json:"lastUpdatedDateTimeUtc,omitempty"`
	ETag                   string          `json:"etag,omitempty"`
	Payload                json.RawMessage `json:"payload,omitempty"`
}

// AttestationMechanism is how devices of an enrollment prove who they are.
// Type says which one of the other fields applies.
type AttestationMechanism struct {
	Type         string                   `json:"type"`
	TPM          *TPMAttestation          `json:"tpm,omitempty"`
	X509         *X509Attestation         `json:"x509,omitempty"`
	SymmetricKey *SymmetricKeyAttestation `json:"symmetricKey,omitempty"`
}

// TPMAttestation is a TPM's endorsement and storage root keys (public).
type TPMAttestation struct {
	EndorsementKey string `json:"endorsementKey"`
	StorageRootKey string `json:"storageRootKey,omitempty"`
}

// X509Attestation holds the certificates of an X.509 enrollment: the
// device's own (clientCertificates, individual enrollments), a CA's
// (signingCertificates, groups) or references to CA certificates uploaded
// to the instance (caReferences, groups).
type X509Attestation struct {
	ClientCertificates  *X509Certificates `json:"clientCertificates,omitempty"`
	SigningCertificates *X509Certificates `json:"signingCertificates,omitempty"`
	CAReferences        *X509CAReferences `json:"caReferences,omitempty"`
}

// X509Certificates is a primary and an optional secondary certificate.
type X509Certificates struct {
	Primary   *X509CertificateWithInfo `json:"primary,omitempty"`
	Secondary *X509CertificateWithInfo `json:"secondary,omitempty"`
}

// X509CertificateWithInfo is a certificate as sent (Certificate: base64 DER
// or PEM) and as the service describes it when read back (Info; the
// service does not send the certificate itself back).
type X509CertificateWithInfo struct {
	Certificate string               `json:"certificate,omitempty"`
	Info        *X509CertificateInfo `json:"info,omitempty"`
}

// X509CertificateInfo describes a certificate (read-only).
type X509CertificateInfo struct {
	SubjectName      string `json:"subjectName"`
	SHA1Thumbprint   string `json:"sha1Thumbprint"`
	SHA256Thumbprint string `json:"sha256Thumbprint"`
	IssuerName       string `json:"issuerName"`
	NotBeforeUTC     string `json:"notBeforeUtc"`
	NotAfterUTC      string `json:"notAfterUtc"`
	SerialNumber     string `json:"serialNumber"`
	Version          int    `json:"version"`
}

// X509CAReferences names CA certificates uploaded to the instance.
type X509CAReferences struct {
	Primary   string `json:"primary,omitempty"`
	Secondary string `json:"secondary,omitempty"`
}

// SymmetricKeyAttestation holds base64 symmetric keys. Its String and
// GoString methods never show them.
type SymmetricKeyAttestation struct {
	PrimaryKey   string `json:"primaryKey,omitempty"`
	SecondaryKey string `json:"secondaryKey,omitempty"`
}

// String describes the attestation without its keys.
func (s SymmetricKeyAttestation) String() string { return "symmetricKey{[keys redacted]}" }

// GoString is String, for %#v.
func (s SymmetricKeyAttestation) GoString() string { return s.String() }

// DeviceCapabilities are a device's capabilities.
type DeviceCapabilities struct {
	IoTEdge bool `json:"iotEdge"`
}

// InitialTwin is the device twin a newly assigned device starts from: tags
// and desired properties, each a TwinCollection kept as JSON.
type InitialTwin struct {
	Tags       json.RawMessage        `json:"tags,omitempty"`
	Properties *InitialTwinProperties `json:"properties,omitempty"`
}

// InitialTwinProperties holds the initial desired properties.
type InitialTwinProperties struct {
	Desired json.RawMessage `json:"desired,omitempty"`
}

// ReprovisionPolicy is what DPS does when a device registers again.
type ReprovisionPolicy struct {
	UpdateHubAssignment bool `json:"updateHubAssignment"`
	MigrateDeviceData   bool `json:"migrateDeviceData"`
}

// CustomAllocationDefinition names the webhook of a custom allocation.
type CustomAllocationDefinition struct {
	WebhookURL string `json:"webhookUrl"`
	APIVersion string `json:"apiVersion"`
}

// QuerySpecification is the body of a query; "*" selects every record.
type QuerySpecification struct {
	Query string `json:"query"`
}

// BulkEnrollmentOperation is the body of POST /enrollments.
type BulkEnrollmentOperation struct {
	Enrollments []IndividualEnrollment `json:"enrollments"`
	Mode        BulkMode               `json:"mode"`
}

// BulkEnrollmentGroupOperation is the body of POST /enrollmentGroups.
type BulkEnrollmentGroupOperation struct {
	EnrollmentGroups []EnrollmentGroup `json:"enrollmentGroups"`
	Mode             BulkMode          `json:"mode"`
}

// BulkResult is the answer to a bulk operation: whether every item
// succeeded, and an error for each item that did not. Items without an
// error succeeded.
type BulkResult struct {
	IsSuccessful bool        `json:"isSuccessful"`
	Errors       []BulkError `json:"errors,omitempty"`
	// RequestID is the x-ms-request-id of the answer (not part of the body).
	RequestID string `json:"-"`
}

// BulkError is one item's failure in a bulk operation. ID is the item's
// registrationId (enrollments) or enrollmentGroupId (groups).
type BulkError struct {
	RegistrationID    string `json:"registrationId,omitempty"`
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
	// ErrorCode is the 6-digit DPS error code, whose first three digits
	// are the HTTP status it stands for (409xxx: conflict).
	ErrorCode int `json:"errorCode"`
	// ErrorStatus is the service's message.
	ErrorStatus string `json:"errorStatus"`
}

// ID returns the item the error is about.
func (e BulkError) ID() string {
	if e.RegistrationID != "" {
		return e.RegistrationID
	}
	return e.EnrollmentGroupID
}

// HTTPStatus returns the HTTP status the error code stands for (its first
// three digits), or 0 when the code is not a 6-digit DPS code.
func (e BulkError) HTTPStatus() int { return statusOfCode(e.ErrorCode) }

// statusOfCode returns the HTTP status of a 6-digit DPS error code.
func statusOfCode(code int) int {
	if code >= 100000 && code <= 599999 {
		return code / 1000
	}
	return 0
}

// ErrorDetails is an error response body (ProvisioningServiceErrorDetails).
type ErrorDetails struct {
	ErrorCode    int               `json:"errorCode"`
	TrackingID   string            `json:"trackingId,omitempty"`
	Message      string            `json:"message,omitempty"`
	Info         map[string]string `json:"info,omitempty"`
	TimestampUTC string            `json:"timestampUtc,omitempty"`
}
