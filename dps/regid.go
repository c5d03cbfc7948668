package dps

import "fmt"

// MaxRegistrationIDLength is the DPS limit on a registration id.
const MaxRegistrationIDLength = 128

// MaxX509RegistrationIDLength is the limit for X.509 devices, whose
// registration id is the certificate subject CN (at most 64 characters).
const MaxX509RegistrationIDLength = 64

// ValidateRegistrationID checks id against the DPS rules: 1 to 128
// characters (64 for X.509), lower-case alphanumerics and '-', '.', '_', ':',
// ending in an alphanumeric or '-'. Lower case only, because DPS compares ids
// case-insensitively and a mixed-case id would not round-trip in reports.
func ValidateRegistrationID(id string, x509 bool) error {
	limit := MaxRegistrationIDLength
	if x509 {
		limit = MaxX509RegistrationIDLength
	}
	switch {
	case id == "":
		return fmt.Errorf("registration id is empty")
	case len(id) > limit:
		if x509 {
			return fmt.Errorf("registration id %q is %d characters; X.509 ids are limited to %d (the certificate CN limit)", id, len(id), limit)
		}
		return fmt.Errorf("registration id %q is %d characters; the limit is %d", id, len(id), limit)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '.', c == '_', c == ':':
		case c >= 'A' && c <= 'Z':
			return fmt.Errorf("registration id %q has upper-case letters; use lower case (DPS ids are case-insensitive)", id)
		default:
			return fmt.Errorf("registration id %q has %q at position %d; allowed: a-z 0-9 - . _ :", id, c, i+1)
		}
	}
	last := id[len(id)-1]
	if last == '.' || last == '_' || last == ':' {
		return fmt.Errorf("registration id %q must end with a letter, a digit or '-'", id)
	}
	return nil
}

// ValidateIDScope checks the form of a DPS ID scope: "0ne" followed by 8
// hexadecimal digits, as the portal shows it (e.g. 0ne00012345) and as every
// example in the DPS documentation and SDK samples has it. The check catches
// a DPS name or host pasted where the scope belongs, before any request.
func ValidateIDScope(scope string) error {
	if len(scope) != 11 || scope[:3] != "0ne" {
		return fmt.Errorf("%q does not look like a DPS ID scope (\"0ne\" followed by 8 hex digits, e.g. 0ne00012345)", scope)
	}
	for i := 3; i < len(scope); i++ {
		c := scope[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return fmt.Errorf("%q does not look like a DPS ID scope (\"0ne\" followed by 8 hex digits, e.g. 0ne00012345)", scope)
		}
	}
	return nil
}
