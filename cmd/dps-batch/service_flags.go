package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/dpsservice"
	"github.com/dps-batch/dps-batch/dpsservice/entra"
)

// The ways a command signs DPS service API requests (--auth).
const (
	authSAS   = "sas"   // a shared access policy's connection string
	authEntra = "entra" // Microsoft Entra ID: DefaultAzureCredential (az login, managed identity, service principal)
	authToken = "token" // a bearer token obtained elsewhere
)

// serviceFlags are the flags of the commands that call the DPS service API
// (enroll, enrollments, deregister). No flag takes a secret: connection
// strings and tokens come from a file or an environment variable.
type serviceFlags struct {
	auth            string
	connEnv         string
	connFile        string
	host            string
	tokenEnv        string
	tokenFile       string
	caFile          string
	apiVersion      string
	requestTimeout  time.Duration
	credentialForUs dpsservice.Credential // set by in-process callers (demo); overrides the flags
}

func (s *serviceFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.auth, "auth", authSAS, "how to sign service requests: `sas` (a shared access policy's connection string), entra (Microsoft Entra ID: az login, managed identity or a service principal; needs --service-host) or token (a bearer token from --service-token-file or --service-token-env)")
	fs.StringVar(&s.connEnv, "service-connection-string-env", "DPS_SERVICE_CONNECTION_STRING", "environment `variable` holding the service connection string (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…)")
	fs.StringVar(&s.connFile, "service-connection-string-file", "", "`file` holding the service connection string (instead of the environment variable)")
	fs.StringVar(&s.host, "service-host", "", "DPS service `host`: NAME.azure-devices-provisioning.net (default: HostName of the connection string); required with --auth entra or token")
	fs.StringVar(&s.tokenEnv, "service-token-env", "DPS_SERVICE_TOKEN", "with --auth token: environment `variable` holding the bearer token")
	fs.StringVar(&s.tokenFile, "service-token-file", "", "with --auth token: `file` holding the bearer token")
	fs.StringVar(&s.caFile, "ca-file", "", "extra CA bundle `file` (PEM) trusted for the service host besides the system roots, e.g. the simulator's CA")
	fs.StringVar(&s.apiVersion, "api-version", dpsservice.DefaultAPIVersion, "DPS service API `version`")
	fs.DurationVar(&s.requestTimeout, "request-timeout", 30*time.Second, "timeout of one HTTP request (`duration`)")
}

// check validates the flags that need no I/O.
func (s *serviceFlags) check(cmd string) error {
	switch s.auth {
	case authSAS, authEntra, authToken:
	default:
		return usagef("--auth sas (a connection string), --auth entra or --auth token", "--auth must be sas, entra or token, not %q", s.auth)
	}
	if s.auth != authSAS && strings.TrimSpace(s.host) == "" && s.credentialForUs == nil {
		return usagef(fmt.Sprintf("dps-batch %s ... --auth %s --service-host NAME.azure-devices-provisioning.net", cmd, s.auth),
			"--auth %s needs --service-host (the DPS instance's service host name)", s.auth)
	}
	if s.requestTimeout <= 0 {
		return usagef("--request-timeout 30s", "--request-timeout must be a positive duration")
	}
	return nil
}

// client builds the service client from the flags.
func (s *serviceFlags) client(e *env, cmd string) (*dpsservice.Client, error) {
	cred, host, err := s.credential(e, cmd)
	if err != nil {
		return nil, err
	}
	if s.host != "" {
		host = s.host
	}
	cfg := dpsservice.Config{Host: host, Credential: cred, APIVersion: s.apiVersion, Timeout: s.requestTimeout, UserAgent: "dps-batch/" + version}
	if s.caFile != "" {
		pool, err := dps.SystemPoolWithCAFile(s.caFile)
		if err != nil {
			return nil, usagef("--ca-file must be a PEM file of CA certificates (dps-batch sim writes one with --ca-out)", "%v", err)
		}
		cfg.RootCAs = pool
	}
	c, err := dpsservice.NewClient(cfg)
	if err != nil {
		return nil, usagef("--service-host NAME.azure-devices-provisioning.net", "%v", err)
	}
	return c, nil
}

// credential reads the credential the flags name; host is the connection
// string's HostName ("" for bearer tokens).
func (s *serviceFlags) credential(e *env, cmd string) (dpsservice.Credential, string, error) {
	if s.credentialForUs != nil {
		return s.credentialForUs, "", nil
	}
	switch s.auth {
	case authEntra:
		b, err := entra.NewDefault()
		if err != nil {
			return nil, "", &exitError{code: exitSystemic, err: fmt.Errorf("Microsoft Entra ID: %v\nhint: sign in with az login, or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET (or a managed identity); the identity needs the role Device Provisioning Service Data Contributor", err)}
		}
		return b, "", nil
	case authToken:
		text, from, err := secretFrom(e, s.tokenFile, s.tokenEnv)
		if err != nil {
			return nil, "", err
		}
		if text == "" {
			return nil, "", usagef(fmt.Sprintf("%s=$(az account get-access-token --resource https://azure-devices-provisioning.net --query accessToken -o tsv) dps-batch %s ... --auth token --service-host NAME.azure-devices-provisioning.net", s.tokenEnv, cmd),
				"--auth token: no token in %s", from)
		}
		return dpsservice.NewBearer(dpsservice.StaticToken(text)), "", nil
	}
	text, from, err := secretFrom(e, s.connFile, s.connEnv)
	if err != nil {
		return nil, "", err
	}
	if text == "" {
		env := s.connEnv
		if env == "" {
			env = "DPS_SERVICE_CONNECTION_STRING"
		}
		return nil, "", usagef(fmt.Sprintf("export %s='HostName=NAME.azure-devices-provisioning.net;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=…' (DPS instance > Shared access policies), or --service-connection-string-file FILE, or --auth entra", env),
			"no service connection string in %s", from)
	}
	cs, err := dpsservice.ParseConnectionString(text)
	if err != nil {
		return nil, "", usagef("copy the connection string of a shared access policy from the DPS instance's Shared access policies blade",
			"the service connection string in %s: %v", from, err)
	}
	return cs.Credential, cs.HostName, nil
}

// secretFrom reads a secret from file, else from the environment variable
// envName; from names where it looked, for messages. The secret itself is
// never printed.
func secretFrom(e *env, file, envName string) (text, from string, err error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", "", usagef("check the file path", "read %s: %v", file, unwrapPath(err))
		}
		return strings.TrimSpace(string(b)), "file " + file, nil
	}
	if envName == "" {
		return "", "no file and no environment variable", nil
	}
	return strings.TrimSpace(e.getenv(envName)), "environment variable " + envName, nil
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// serviceStop reports a run stopped by a failure every request would hit
// (credentials, rights, host): the error and what to fix, exit 6.
func serviceStop(e *env, cmd string, se *batch.EnrollStopError) error {
	fmt.Fprintf(e.stderr, "dps-batch %s: %v\n", cmd, se.Err)
	if se.Hint != "" {
		fmt.Fprintf(e.stderr, "hint: %s\n", se.Hint)
	}
	return &exitError{code: exitSystemic}
}
