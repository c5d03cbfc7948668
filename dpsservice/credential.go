package dpsservice

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Credential signs requests: it returns the Authorization header value for
// one request to the service host. Implementations must be safe for
// concurrent use. The value is a secret: it is sent, never logged.
type Credential interface {
	Authorization(ctx context.Context) (string, error)
}

// DefaultPolicyName is the shared access policy DPS creates with every
// instance, with every right.
const DefaultPolicyName = "provisioningserviceowner"

// DefaultSASTTL is the lifetime of each SAS token a SharedAccessKey makes
// (a fresh one signs every request).
const DefaultSASTTL = 10 * time.Minute

// ErrCredential marks a connection string, key or token that cannot be used
// as given. Its messages never quote key material.
var ErrCredential = errors.New("invalid service credential")

// SharedAccessKey signs requests with a shared access policy's key, as the
// connection string HostName=…;SharedAccessKeyName=…;SharedAccessKey=…
// gives it:
//
//	SharedAccessSignature sr={url-encoded host}&sig={url-encoded signature}&se={expiry}&skn={policy}
//
// where the signature is HMAC-SHA256, keyed with the decoded policy key,
// over the url-encoded host, a newline and the expiry in Unix seconds. A
// fresh token signs every request. Printing a SharedAccessKey never shows
// its key.
type SharedAccessKey struct {
	// HostName is the service host the tokens are scoped to (sr), e.g.
	// "my-dps.azure-devices-provisioning.net".
	HostName string
	// KeyName is the shared access policy (skn).
	KeyName string
	// TTL is each token's lifetime; 0 means DefaultSASTTL.
	TTL time.Duration
	// Now is the clock of the expiry; nil means time.Now.
	Now func() time.Time

	key []byte
}

// NewSharedAccessKey returns a credential for policy keyName of host, whose
// key is the base64 text key.
func NewSharedAccessKey(host, keyName, key string) (*SharedAccessKey, error) {
	raw, err := decodeKey(key)
	if err != nil {
		return nil, err
	}
	switch {
	case strings.TrimSpace(host) == "":
		return nil, fmt.Errorf("%w: empty host name", ErrCredential)
	case strings.TrimSpace(keyName) == "":
		return nil, fmt.Errorf("%w: empty shared access key name", ErrCredential)
	}
	return &SharedAccessKey{HostName: strings.TrimSpace(host), KeyName: strings.TrimSpace(keyName), key: raw}, nil
}

// decodeKey decodes a base64 policy key (standard or URL alphabet, padded
// or not) without ever quoting it.
func decodeKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("%w: empty shared access key", ErrCredential)
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(s); err == nil && len(k) > 0 {
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w: the shared access key is not valid base64 (%d characters; not shown)", ErrCredential, len(s))
}

// String describes the credential without its key.
func (k *SharedAccessKey) String() string {
	return fmt.Sprintf("SharedAccessKey(host=%s, policy=%s, key=[redacted])", k.HostName, k.KeyName)
}

// GoString is String, for %#v.
func (k *SharedAccessKey) GoString() string { return k.String() }

// Authorization returns a fresh SAS token.
func (k *SharedAccessKey) Authorization(context.Context) (string, error) {
	if len(k.key) == 0 {
		return "", fmt.Errorf("%w: no key (use NewSharedAccessKey or ParseConnectionString)", ErrCredential)
	}
	now := time.Now
	if k.Now != nil {
		now = k.Now
	}
	ttl := k.TTL
	if ttl <= 0 {
		ttl = DefaultSASTTL
	}
	return SASToken(k.key, k.HostName, k.KeyName, now().Add(ttl)), nil
}

// SASToken builds a service SAS token for host, signed with the raw policy
// key, expiring at expiry.
func SASToken(key []byte, host, keyName string, expiry time.Time) string {
	sr := url.QueryEscape(host)
	se := strconv.FormatInt(expiry.Unix(), 10)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(sr + "\n" + se))
	sig := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	return "SharedAccessSignature sr=" + sr + "&sig=" + url.QueryEscape(sig) + "&se=" + se + "&skn=" + url.QueryEscape(keyName)
}

// ConnectionString is a parsed service connection string.
type ConnectionString struct {
	HostName string // HostName: the service host
	KeyName  string // SharedAccessKeyName: the policy
	// Credential signs requests with the policy key.
	Credential *SharedAccessKey
}

// ParseConnectionString parses
// "HostName=…;SharedAccessKeyName=…;SharedAccessKey=…" (the portal's
// "Shared access policies" blade gives it; order and case of the names do
// not matter). Errors match ErrCredential and never quote the key.
func ParseConnectionString(s string) (*ConnectionString, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("%w: empty connection string", ErrCredential)
	}
	var host, name, key string
	var seenKey bool
	for i, part := range strings.Split(s, ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("%w: connection string part %d has no '=' (want HostName=…;SharedAccessKeyName=…;SharedAccessKey=…)", ErrCredential, i+1)
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "hostname":
			host = strings.TrimSpace(v)
		case "sharedaccesskeyname":
			name = strings.TrimSpace(v)
		case "sharedaccesskey":
			key, seenKey = v, true
		case "deviceid", "sharedaccesssignature":
			return nil, fmt.Errorf("%w: this is not a DPS service connection string (it has %s); copy one from the DPS instance's Shared access policies blade", ErrCredential, strings.TrimSpace(k))
		default:
			// Unknown parts are ignored, as the Azure SDKs do.
		}
	}
	var missing []string
	if host == "" {
		missing = append(missing, "HostName")
	}
	if name == "" {
		missing = append(missing, "SharedAccessKeyName")
	}
	if !seenKey {
		missing = append(missing, "SharedAccessKey")
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: connection string lacks %s (want HostName=…;SharedAccessKeyName=…;SharedAccessKey=…)", ErrCredential, strings.Join(missing, ", "))
	}
	cred, err := NewSharedAccessKey(host, name, key)
	if err != nil {
		return nil, err
	}
	return &ConnectionString{HostName: cred.HostName, KeyName: cred.KeyName, Credential: cred}, nil
}

// String describes the connection string without its key.
func (c *ConnectionString) String() string {
	return "HostName=" + c.HostName + ";SharedAccessKeyName=" + c.KeyName + ";SharedAccessKey=[redacted]"
}

// GoString is String, for %#v.
func (c *ConnectionString) GoString() string { return c.String() }

// EntraScope is the Microsoft Entra ID scope of the DPS service API.
const EntraScope = "https://azure-devices-provisioning.net/.default"

// Token is a bearer access token and its expiry.
type Token struct {
	Value     string
	ExpiresOn time.Time // zero: unknown (used until refused)
}

// TokenSource returns bearer tokens for EntraScope: an adapter around
// azidentity (see package dpsservice/entra), a token file, or a test
// issuer. Token may be called concurrently.
type TokenSource interface {
	Token(ctx context.Context) (Token, error)
}

// TokenSourceFunc adapts a function to TokenSource.
type TokenSourceFunc func(ctx context.Context) (Token, error)

// Token calls f.
func (f TokenSourceFunc) Token(ctx context.Context) (Token, error) { return f(ctx) }

// Bearer signs requests with "Bearer <token>" from a TokenSource, reusing a
// token until RefreshBefore ahead of its expiry.
type Bearer struct {
	Source TokenSource
	// RefreshBefore is how long before expiry a token is replaced; 0
	// means 5 minutes.
	RefreshBefore time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu  sync.Mutex
	tok Token
}

// NewBearer returns a Credential using src.
func NewBearer(src TokenSource) *Bearer { return &Bearer{Source: src} }

// Authorization returns "Bearer <token>".
func (b *Bearer) Authorization(ctx context.Context) (string, error) {
	if b.Source == nil {
		return "", fmt.Errorf("%w: bearer credential without a token source", ErrCredential)
	}
	now := time.Now
	if b.Now != nil {
		now = b.Now
	}
	early := b.RefreshBefore
	if early <= 0 {
		early = 5 * time.Minute
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tok.Value != "" && (b.tok.ExpiresOn.IsZero() || now().Add(early).Before(b.tok.ExpiresOn)) {
		return "Bearer " + b.tok.Value, nil
	}
	t, err := b.Source.Token(ctx)
	if err != nil {
		return "", &Error{Op: "get Entra token", Err: fmt.Errorf("%w: %v", ErrCredential, redactText(err.Error()))}
	}
	t.Value = strings.TrimSpace(t.Value)
	if t.Value == "" {
		return "", &Error{Op: "get Entra token", Err: fmt.Errorf("%w: the token source returned an empty token", ErrCredential)}
	}
	b.tok = t
	return "Bearer " + t.Value, nil
}

// StaticToken is a TokenSource that always returns the same token (from a
// file or environment variable: e.g. az account get-access-token --resource
// https://azure-devices-provisioning.net). Printing it never shows the token.
type StaticToken string

// Token returns the token.
func (s StaticToken) Token(context.Context) (Token, error) {
	v := strings.TrimSpace(string(s))
	v = strings.TrimPrefix(v, "Bearer ")
	if v == "" {
		return Token{}, errors.New("empty token")
	}
	return Token{Value: v}, nil
}

// String describes the token without showing it.
func (s StaticToken) String() string { return "StaticToken([redacted])" }

// GoString is String, for %#v.
func (s StaticToken) GoString() string { return s.String() }
