package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/dps-batch/dps-batch/batch"
	"github.com/dps-batch/dps-batch/dpsservice"
)

// runEnrollments dispatches "dps-batch enrollments <verb>".
func runEnrollments(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("dps-batch enrollments export --help", "a subcommand is required: export")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprintf(e.stdout, `Work with the individual enrollments of a DPS instance through its service API.

Usage:
  dps-batch enrollments <subcommand> [flags]

Subcommands:
  export        Write every individual enrollment (paged query) as CSV or JSON lines, without keys

Run "dps-batch enrollments <subcommand> --help" for its flags.

Examples:
  dps-batch enrollments export --out enrollments.csv
  dps-batch enrollments export --format jsonl --out enrollments.jsonl
`)
		return errHelpShown
	case "export":
		return runEnrollmentsExport(ctx, e, args[1:])
	}
	return usagef("dps-batch enrollments --help", "unknown enrollments subcommand %q (want export)", args[0])
}

const exportPurpose = `Write every individual enrollment of the DPS instance, read with the service API's
paged query (x-ms-max-item-count, x-ms-continuation), paced like every service
request, one row per enrollment:

  csv    registration_id, attestation, certificate_sha256, certificate_subject,
         certificate_not_after, ca_reference, device_id, provisioning_status,
         allocation_policy, iot_hubs (separated by ;), iot_edge, etag,
         created, last_updated, registration_status, assigned_hub,
         registration_device_id, registration_error_code, registration_error
  jsonl  the enrollment as the service sends it, one JSON object a line

Symmetric keys are never written: keys stay in DPS and in your key manifests.
The policy needs EnrollmentRead (with Entra ID: Device Provisioning Service Data
Reader). Service credentials as for enroll.`

// exportColumns is the CSV header of export; part of the command-line
// contract: add columns only at the end.
var exportColumns = []string{"registration_id", "attestation", "certificate_sha256", "certificate_subject", "certificate_not_after",
	"ca_reference", "device_id", "provisioning_status", "allocation_policy", "iot_hubs", "iot_edge", "etag", "created", "last_updated",
	"registration_status", "assigned_hub", "registration_device_id", "registration_error_code", "registration_error"}

func runEnrollmentsExport(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "enrollments export", exportPurpose,
		"dps-batch enrollments export --out enrollments.csv",
		"dps-batch enrollments export --format jsonl | jq -r 'select(.provisioningStatus == \"disabled\") | .registrationId'",
		"dps-batch enrollments export --auth entra --service-host my-dps.azure-devices-provisioning.net --out enrollments.csv",
		"# against a local simulator (dps-batch sim writes its connection string to sim-service.conn):\nDPS_SERVICE_CONNECTION_STRING=\"$(cat sim-service.conn)\" \\\n    dps-batch enrollments export --ca-file sim-ca.pem")
	var svc serviceFlags
	format := fs.String("format", "csv", "output `format`: csv or jsonl")
	out := fs.String("out", "", "output `file` (default: standard output); written whole, replacing the file")
	pageSize := fs.Int("page-size", 100, "enrollments per page (`N`)")
	rate := fs.Float64("rate", batch.DefaultServiceRate, "pages per minute (`N/min`); -1 = unlimited")
	svc.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *format != "csv" && *format != "jsonl" {
		return usagef("--format csv or --format jsonl", "--format must be csv or jsonl, not %q", *format)
	}
	if *pageSize < 1 || *pageSize > 1000 {
		return usagef("--page-size 100", "--page-size must be 1 to 1000, got %d", *pageSize)
	}
	if *rate == 0 || *rate < -1 {
		return usagef("--rate 900", "--rate must be a positive number per minute, or -1")
	}
	if err := svc.check("enrollments export"); err != nil {
		return err
	}
	client, err := svc.client(e, "enrollments export")
	if err != nil {
		return err
	}
	defer client.Close()

	var (
		w      io.Writer = e.stdout
		tmp    *os.File
		commit func() error
	)
	if *out != "" {
		tmp, err = os.CreateTemp(filepath.Dir(*out), "."+filepath.Base(*out)+".tmp-*")
		if err != nil {
			return fmt.Errorf("create --out: %w", err)
		}
		defer func() {
			if tmp != nil {
				tmp.Close()
				os.Remove(tmp.Name())
			}
		}()
		w = tmp
		commit = func() error {
			if err := tmp.Chmod(0o644); err != nil {
				return err
			}
			if err := tmp.Close(); err != nil {
				return err
			}
			name := tmp.Name()
			tmp = nil
			return os.Rename(name, *out)
		}
	}
	bw := bufio.NewWriter(w)
	write := exportWriter(bw, *format)
	st, err := batch.ExportEnrollments(ctx, client, batch.ExportOptions{PageSize: *pageSize, Rate: *rate}, write.row)
	if ferr := write.flush(); err == nil {
		err = ferr
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		if dpsservice.Classify(err) == dpsservice.Fatal {
			return serviceStop(e, "enrollments export", &batch.EnrollStopError{Err: err, Hint: dpsservice.Hint(err)})
		}
		if h := dpsservice.Hint(err); h != "" {
			err = fmt.Errorf("%w\nhint: %s", err, h)
		}
		code := exitInternal
		if dpsservice.Classify(err) == dpsservice.Retryable {
			code = exitResumable
		}
		return &exitError{code: code, err: fmt.Errorf("export stopped after %d enrollments in %d pages: %w", st.Enrollments, st.Pages, err)}
	}
	if commit != nil {
		if err := commit(); err != nil {
			return fmt.Errorf("write --out: %w", err)
		}
	}
	where := "standard output"
	if *out != "" {
		where = *out
	}
	fmt.Fprintf(e.stderr, "Exported %d enrollments (%d pages, %d retries, %d throttled) to %s\n", st.Enrollments, st.Pages, st.Retries, st.Throttled, where)
	return nil
}

// rowWriter writes enrollments in one format.
type rowWriter struct {
	row   func(dpsservice.IndividualEnrollment) error
	flush func() error
}

func exportWriter(w io.Writer, format string) rowWriter {
	if format == "jsonl" {
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		return rowWriter{
			row: func(e dpsservice.IndividualEnrollment) error {
				return enc.Encode(withoutKeys(e))
			},
			flush: func() error { return nil },
		}
	}
	cw := csv.NewWriter(w)
	header := false
	return rowWriter{
		row: func(e dpsservice.IndividualEnrollment) error {
			if !header {
				header = true
				if err := cw.Write(exportColumns); err != nil {
					return err
				}
			}
			return cw.Write(exportRow(e))
		},
		flush: func() error {
			if !header {
				_ = cw.Write(exportColumns)
			}
			cw.Flush()
			return cw.Error()
		},
	}
}

// withoutKeys returns e with any symmetric key removed.
func withoutKeys(e dpsservice.IndividualEnrollment) dpsservice.IndividualEnrollment {
	if a := e.Attestation; a != nil && a.SymmetricKey != nil {
		c := *a
		c.SymmetricKey = nil
		e.Attestation = &c
	}
	return e
}

// exportRow is one CSV row.
func exportRow(e dpsservice.IndividualEnrollment) []string {
	var att, thumb, subject, notAfter, caRef string
	if a := e.Attestation; a != nil {
		att = a.Type
		if x := a.X509; x != nil {
			for _, c := range []*dpsservice.X509Certificates{x.ClientCertificates, x.SigningCertificates} {
				if c != nil && c.Primary != nil && c.Primary.Info != nil {
					i := c.Primary.Info
					thumb, subject, notAfter = i.SHA256Thumbprint, i.SubjectName, i.NotAfterUTC
					break
				}
			}
			if x.CAReferences != nil {
				caRef = x.CAReferences.Primary
			}
		}
	}
	edge := ""
	if e.Capabilities != nil {
		edge = strconv.FormatBool(e.Capabilities.IoTEdge)
	}
	var rs dpsservice.DeviceRegistrationState
	if e.RegistrationState != nil {
		rs = *e.RegistrationState
	}
	code := ""
	if rs.ErrorCode != 0 {
		code = strconv.Itoa(rs.ErrorCode)
	}
	return []string{e.RegistrationID, att, thumb, subject, notAfter, caRef, e.DeviceID, string(e.ProvisioningStatus), string(e.AllocationPolicy),
		strings.Join(e.IoTHubs, ";"), edge, e.ETag, e.CreatedDateTimeUTC, e.LastUpdatedDateTimeUTC,
		rs.Status, rs.AssignedHub, rs.DeviceID, code, rs.ErrorMessage}
}
