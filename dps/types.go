// Package dps is a device-side client for the Azure IoT Hub Device Provisioning
// Service (DPS) HTTPS API: register a device, poll its operation, and look up a
// registration, authenticating with an X.509 client certificate or a SAS token
// derived from a symmetric key.
//
// The package does single HTTP transactions and classifies each failure; it has
// no retry loop and no pacing, which belong to the caller (see package batch).
// It imports only the standard library so any Go program can use it.
//
// Wire format reference: the DPS device REST API, api-version 2021-10-01
// (Azure/azure-rest-api-specs, deviceprovisioningservices/data-plane, device.json).
package dps

import (
	"encoding/json"
)

// Status is the state of a registration operation or registration, as DPS
// spells it on the wire (lower case, compared case-sensitively like the C and
// C# SDKs do).
type Status string

// The status values DPS returns.
const (
	StatusUnassigned Status = "unassigned"
	StatusAssigning  Status = "assigning"
	StatusAssigned   Status = "assigned"
	StatusFailed     Status = "failed"
	StatusDisabled   Status = "disabled"
)

// Final reports whether s ends a registration operation: assigned, failed or
// disabled. Assigning and unassigned are still in progress (C# keeps polling
// on unassigned for non-TPM devices, and so do we).
func (s Status) Final() bool {
	switch s {
	case StatusAssigned, StatusFailed, StatusDisabled:
		return true
	}
	return false
}

// Substatus values of an assigned registration (DPS api-version 2019-04-15 and later).
const (
	SubstatusInitialAssignment                = "initialAssignment"
	SubstatusDeviceDataMigrated               = "deviceDataMigrated"
	SubstatusDeviceDataReset                  = "deviceDataReset"
	SubstatusReprovisionedToInitialAssignment = "reprovisionedToInitialAssignment"
)

// DeviceRegistration is the request body of a register PUT and of a
// registration status lookup POST.
type DeviceRegistration struct {
	RegistrationID string          `json:"registrationId"`
	Payload        json.RawMessage `json:"payload,omitempty"`
	// CSR is the device's PKCS#10 certificate signing request, base64 DER
	// without PEM armour, whose subject CN is the registration id. Only the
	// register PUT of api-version CertificateIssuanceAPIVersion carries it
	// (a status lookup with one is a bad request); DPS then returns the
	// issued chain in the final operation result.
	CSR string `json:"csr,omitempty"`
}

// RegistrationOperationStatus is the body DPS returns for a register PUT and
// for an operation status GET.
type RegistrationOperationStatus struct {
	OperationID       string                    `json:"operationId"`
	Status            Status                    `json:"status"`
	RegistrationState *DeviceRegistrationResult `json:"registrationState,omitempty"`
}

// DeviceRegistrationResult is the state of one registration: where the device
// was assigned, or why not. Unknown fields are ignored when decoding.
type DeviceRegistrationResult struct {
	RegistrationID         string                          `json:"registrationId"`
	CreatedDateTimeUTC     string                          `json:"createdDateTimeUtc,omitempty"`
	AssignedHub            string                          `json:"assignedHub,omitempty"`
	DeviceID               string                          `json:"deviceId,omitempty"`
	Status                 Status                          `json:"status"`
	Substatus              string                          `json:"substatus,omitempty"`
	ErrorCode              int                             `json:"errorCode,omitempty"`
	ErrorMessage           string                          `json:"errorMessage,omitempty"`
	LastUpdatedDateTimeUTC string                          `json:"lastUpdatedDateTimeUtc,omitempty"`
	ETag                   string                          `json:"etag,omitempty"`
	Payload                json.RawMessage                 `json:"payload,omitempty"`
	X509                   *X509RegistrationResult         `json:"x509,omitempty"`
	SymmetricKey           *SymmetricKeyRegistrationResult `json:"symmetricKey,omitempty"`
	TPM                    *TPMRegistrationResult          `json:"tpm,omitempty"`
	IssuedCertificateChain []string                        `json:"issuedCertificateChain,omitempty"`
}

// X509RegistrationResult describes the certificate a device registered with.
type X509RegistrationResult struct {
	CertificateInfo        *X509CertificateInfo `json:"certificateInfo,omitempty"`
	EnrollmentGroupID      string               `json:"enrollmentGroupId,omitempty"`
	SigningCertificateInfo *X509CertificateInfo `json:"signingCertificateInfo,omitempty"`
}

// X509CertificateInfo summarises one certificate.
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

// SymmetricKeyRegistrationResult names the enrollment group a symmetric-key
// device registered through, if any.
type SymmetricKeyRegistrationResult struct {
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
}

// TPMRegistrationResult carries the TPM authentication key. TPM attestation is
// not implemented by this package; the type exists so results decode fully.
type TPMRegistrationResult struct {
	AuthenticationKey string `json:"authenticationKey,omitempty"`
}

// ErrorBody is the JSON body DPS sends with a non-2xx response
// (ProvisioningServiceErrorDetails). TrackingID equals the x-ms-request-id header.
type ErrorBody struct {
	ErrorCode    int               `json:"errorCode"`
	TrackingID   string            `json:"trackingId"`
	Message      string            `json:"message"`
	Info         map[string]string `json:"info,omitempty"`
	TimestampUTC string            `json:"timestampUtc,omitempty"`
}

// Well-known DPS error codes (6 digits; the first three are the HTTP status).
const (
	CodeBadRequest             = 400000
	CodeCustomAllocation       = 400207
	CodeNoHub                  = 400208
	CodeUnauthorized           = 401000
	CodeInvalidCredentials     = 401002
	CodeNotFound               = 404201
	CodePreconditionFailed     = 409203
	CodeThrottled              = 429001
	CodeInternalServerError    = 500000
	CodeServiceUnavailable     = 503000
	CodeUnsupportedMediaType   = 415000
	CodeMethodNotAllowed       = 405000
	CodeEnrollmentNotFound     = 404204
	CodeDeviceRegistrationGone = 404202
)

// Header names DPS uses.
const (
	HeaderRequestID  = "x-ms-request-id"
	HeaderErrorCode  = "x-ms-error-code"
	HeaderRetryAfter = "Retry-After"
)

// DefaultEndpoint is the global device endpoint shared by every DPS instance;
// the ID scope in the path selects the instance.
const DefaultEndpoint = "https://global.azure-devices-provisioning.net"

// DefaultAPIVersion is the documented stable device API version.
const DefaultAPIVersion = "2021-10-01"

// CertificateIssuanceAPIVersion is the device API version (a preview) whose
// register PUT carries a CSR and whose final operation result carries the
// certificate chain DPS issued (DeviceRegistrationResult.IssuedCertificateChain).
// The status lookup never returns that chain.
const CertificateIssuanceAPIVersion = "2025-07-01-preview"
