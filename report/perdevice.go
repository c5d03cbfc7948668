package report

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dps-batch/dps-batch/ledger"
)

// DeviceFile is the JSON file WritePerDevice writes for one device: what a
// flashing station needs to give the device its identity.
type DeviceFile struct {
	RegistrationID string  `json:"registrationId"`
	Status         string  `json:"status"`
	AssignedHub    string  `json:"assignedHub,omitempty"`
	DeviceID       string  `json:"deviceId,omitempty"`
	Payload        Payload `json:"payload,omitempty"`
	// SymmetricKey is the device's base64 symmetric key (its individual
	// enrollment key, or the key derived from the group key), only when
	// PerDeviceOptions.Key gives one.
	SymmetricKey string `json:"symmetricKey,omitempty"`
}

// PerDeviceOptions controls WritePerDevice.
type PerDeviceOptions struct {
	// States selects the devices by state; nil or empty selects all.
	States []ledger.State
	// Force replaces existing files. Without it WritePerDevice refuses,
	// before writing anything, when any file it would write exists.
	Force bool
	// Key, when set, returns the base64 symmetric key to write for a
	// device ("" for none, e.g. an X.509 device). Files are then written
	// with mode 0600 (0644 without keys), and a new directory with 0700.
	// WritePerDevice calls it for every selected device before writing
	// anything, so that an error (a device the manifest lacks, a key that
	// is not the one the device registered with) leaves no file behind.
	Key func(ledger.Device) (string, error)
}

// PerDeviceError reports why WritePerDevice wrote nothing: the devices
// whose file exists (without Force), whose registration id cannot be a file
// name, or whose key could not be given.
type PerDeviceError struct {
	Dir     string
	Exist   []string // registration ids whose file exists (the first few)
	NExist  int      // how many files exist
	BadName []string // registration ids that cannot be file names here (the first few)
	NBad    int
	KeyErr  error // the first key error
	NKeyErr int   // how many devices had one
}

// examples is how many ids a PerDeviceError lists of each kind.
const examples = 3

func (e *PerDeviceError) Error() string {
	var parts []string
	if e.NExist > 0 {
		parts = append(parts, fmt.Sprintf("%d of the files exist already (%s); --force replaces them",
			e.NExist, listIDs(e.Exist, e.NExist, ".json")))
	}
	if e.NBad > 0 {
		parts = append(parts, fmt.Sprintf("%d registration id(s) cannot be file names on this system (%s)",
			e.NBad, listIDs(e.BadName, e.NBad, "")))
	}
	if e.NKeyErr > 0 {
		msg := e.KeyErr.Error()
		if e.NKeyErr > 1 {
			msg += fmt.Sprintf(" (and %d more device(s) like it)", e.NKeyErr-1)
		}
		parts = append(parts, msg)
	}
	return fmt.Sprintf("per-device files in %s: nothing written: %s", e.Dir, strings.Join(parts, "; "))
}

func listIDs(ids []string, n int, suffix string) string {
	s := strings.Join(ids, suffix+", ") + suffix
	if n > len(ids) {
		s += ", ..."
	}
	return s
}

// FileName returns the name of the per-device file of a registration id,
// "<registration id>.json", and whether it is usable as a file name in a
// directory on this system (registration ids may hold ':', which Windows
// does not allow in file names).
func FileName(registrationID string) (string, bool) {
	name := registrationID + ".json"
	if registrationID == "" || strings.ContainsAny(registrationID, `/\`) || !filepath.IsLocal(name) {
		return name, false
	}
	return name, true
}

// WritePerDevice writes one JSON file per selected device into dir,
// DIR/<registration id>.json (see DeviceFile), creating dir if needed, and
// returns how many it wrote. It checks every file first (names, existing
// files unless opts.Force, keys) and writes nothing when any check fails,
// returning a *PerDeviceError. Files are written whole: a new file is
// created exclusively, a replaced one is renamed over the old.
func WritePerDevice(ctx context.Context, l *ledger.Ledger, dir string, opts PerDeviceOptions) (int, error) {
	fileMode, dirMode := fs.FileMode(0o644), fs.FileMode(0o755)
	if opts.Key != nil {
		fileMode, dirMode = 0o600, 0o700
	}
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return 0, fmt.Errorf("per-device files: %s is a file; name a directory", dir)
	}

	// Check everything before the first write.
	perr := &PerDeviceError{Dir: dir}
	err := l.Each(ctx, opts.States, func(d ledger.Device) error {
		name, ok := FileName(d.RegistrationID)
		if !ok {
			if perr.NBad++; len(perr.BadName) < examples {
				perr.BadName = append(perr.BadName, fmt.Sprintf("%q", d.RegistrationID))
			}
			return nil
		}
		if !opts.Force {
			if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
				if perr.NExist++; len(perr.Exist) < examples {
					perr.Exist = append(perr.Exist, d.RegistrationID)
				}
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("per-device files: %w", err)
			}
		}
		if opts.Key != nil {
			if _, err := opts.Key(d); err != nil {
				if perr.NKeyErr++; perr.KeyErr == nil {
					perr.KeyErr = err
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if perr.NExist > 0 || perr.NBad > 0 || perr.NKeyErr > 0 {
		return 0, perr
	}

	if err := os.MkdirAll(dir, dirMode); err != nil {
		return 0, fmt.Errorf("per-device files: %w", err)
	}
	n := 0
	err = l.Each(ctx, opts.States, func(d ledger.Device) error {
		name, _ := FileName(d.RegistrationID)
		f := DeviceFile{RegistrationID: d.RegistrationID, Status: string(d.State), AssignedHub: d.AssignedHub,
			DeviceID: d.DeviceID, Payload: payloadOf(d.ReturnedPayload)}
		if opts.Key != nil {
			key, err := opts.Key(d)
			if err != nil {
				return fmt.Errorf("per-device files: %w", err)
			}
			f.SymmetricKey = key
		}
		body, err := json.MarshalIndent(f, "", "  ")
		if err != nil {
			return fmt.Errorf("per-device file of %s: %w", d.RegistrationID, err)
		}
		body = append(body, '\n')
		if err := writeFile(filepath.Join(dir, name), body, fileMode, opts.Force); err != nil {
			return fmt.Errorf("per-device file of %s: %w", d.RegistrationID, err)
		}
		n++
		return nil
	})
	return n, err
}

// writeFile writes body to path with exactly mode. Without replace the file
// must not exist (O_EXCL); with it, a temporary file is renamed over path,
// so a reader never sees a half-written file and the old file's mode does
// not carry over.
func writeFile(path string, body []byte, mode fs.FileMode, replace bool) error {
	var f *os.File
	var err error
	if replace {
		f, err = os.CreateTemp(filepath.Dir(path), ".dps-batch-*.tmp")
	} else {
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	}
	if err != nil {
		return err
	}
	_, err = f.Write(body)
	if err == nil {
		err = f.Chmod(mode) // whatever the umask (and CreateTemp's 0600)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && replace {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}
