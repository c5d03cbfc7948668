package certs

import "fmt"

// MaxRegistrationIDLength is the longest registration id an X.509 device
// can have: DPS takes it from the subject CN, which holds at most 64
// characters.
const MaxRegistrationIDLength = 64

// ValidateRegistrationID checks that id can be the subject CN of a DPS
// device certificate: 1 to 64 characters of a-z, 0-9, '-', '.', '_' and ':',
// ending in a letter, a digit or '-'. Upper case is refused because DPS
// compares ids case-insensitively, so a mixed-case id would not round-trip.
func ValidateRegistrationID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("registration id is empty")
	case len(id) > MaxRegistrationIDLength:
		return fmt.Errorf("registration id %q is %d characters; X.509 ids are limited to %d (the certificate CN limit)", id, len(id), MaxRegistrationIDLength)
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
	if last := id[len(id)-1]; last == '.' || last == '_' || last == ':' {
		return fmt.Errorf("registration id %q must end with a letter, a digit or '-'", id)
	}
	return nil
}
