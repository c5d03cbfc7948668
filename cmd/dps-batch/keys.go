package main

import (
	"context"
	"encoding/base64"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/manifests"
)

// runKeys dispatches "dps-batch keys <verb>".
func runKeys(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 {
		return usagef("dps-batch keys derive --help", "a subcommand is required: derive")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		printKeysUsage(e.stdout)
		return errHelpShown
	case "derive":
		return runKeysDerive(ctx, e, args[1:])
	}
	return usagef("dps-batch keys --help", "unknown keys subcommand %q (want derive)", args[0])
}

func printKeysUsage(w io.Writer) {
	fmt.Fprintf(w, `Work with the symmetric keys of devices. Keys are written to owner-only files,
never printed.

Usage:
  dps-batch keys <subcommand> [flags]

Subcommands:
  derive        Write the per-device keys of a symmetric-key enrollment group: what gets flashed onto devices

Run "dps-batch keys <subcommand> --help" for its flags.

Examples:
  dps-batch keys derive --manifest devices.csv --group-key-file group.key --out device-keys.csv
`)
}

const keysDerivePurpose = `Derive the per-device keys of a symmetric-key enrollment group. A device of the
group registers with its own key, derived from the group key and its
registration id; that derived key, never the group key, is what gets flashed
onto the device. For every manifest row without credentials (a group device):

  device key = base64(HMAC-SHA256(base64-decoded group key, registration id))

as DPS computes it (and az iot dps compute-device-key).

The group key comes from --group-key-file or the environment variable named by
--group-key-env, never from the command line. The keys go to files, never to
the terminal:
  --out FILE.csv   registration_id,symmetric_key for every group device; this is
                   also a manifest: provisioning it needs no group key
  --out-dir DIR    DIR/<registration id>.key: the base64 key on one line, per device
Every file is mode 0600 and written whole (a temporary file, then renamed);
existing files are kept unless --force.

The manifest is validated first, as provision validates it; a manifest with
problems writes nothing. Rows with their own credentials (X.509, or a
symmetric_key) are skipped.`

func runKeysDerive(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "keys derive", keysDerivePurpose,
		"dps-batch keys derive --manifest devices.csv --group-key-file group.key --out device-keys.csv",
		"DPS_GROUP_KEY=$(cat group.key) dps-batch keys derive --manifest devices.csv --out-dir ./keys",
		"# a test fleet of a symmetric-key enrollment group, and its keys to flash\n"+
			"dps-batch certs fleet --attestation symmetric-group --count 100 --out ./sensors\n"+
			"dps-batch keys derive --manifest ./sensors/manifest.csv --group-key-file ./sensors/group.key --out ./sensors/device-keys.csv")
	var (
		gk              provisionFlags // only its group key flags
		manifest        string
		outFile, outDir string
		force, strict   bool
		columns         manifests.ColumnMap
	)
	fs.StringVar(&manifest, "manifest", "", "manifest CSV `file`; its rows without credentials are the group's devices; required")
	fs.StringVar(&gk.groupKeyFile, "group-key-file", "", "`file` holding the base64 group enrollment key (the group's primary or secondary key)")
	fs.StringVar(&gk.groupKeyEnv, "group-key-env", "DPS_GROUP_KEY", "environment `variable` holding the base64 group key (used when --group-key-file is not given)")
	fs.StringVar(&outFile, "out", "", "write the keys to this CSV `file` (registration_id,symmetric_key; mode 0600)")
	fs.StringVar(&outDir, "out-dir", "", "write one key file per device to this `directory`: DIR/<registration id>.key (mode 0600)")
	fs.BoolVar(&force, "force", false, "overwrite existing key files")
	addManifestFlags(fs, &strict, &columns)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	example := "dps-batch keys derive --manifest devices.csv --group-key-file group.key --out device-keys.csv"
	if err := requireFlag(fs, "manifest", manifest, example); err != nil {
		return err
	}
	if err := checkKeysOutput(outFile, outDir, force); err != nil {
		return err
	}
	groupKey, err := gk.groupKey(e)
	if err != nil {
		return err
	}
	if groupKey == nil {
		env := "the environment variable " + gk.groupKeyEnv
		if gk.groupKeyEnv == "" {
			env = "--group-key-env VARIABLE"
		}
		return usagef("dps-batch keys derive --manifest "+shellQuote(manifest)+" --group-key-file group.key --out device-keys.csv (the group's primary key, from its DPS enrollment group page)",
			"no group key: give --group-key-file FILE, or set %s", env)
	}

	opts := manifests.Options{GroupKey: groupKey, Strict: strict, Columns: columns, IgnoreCSRColumns: true}
	if err := validateForKeys(ctx, e, manifest, opts); err != nil {
		return err
	}
	var n, skipped int
	if outFile != "" {
		n, skipped, err = writeKeysCSV(manifest, opts, outFile, force)
	} else {
		n, skipped, err = writeKeyFiles(manifest, opts, outDir, force)
	}
	if errors.Is(err, certs.ErrExists) {
		return usagef("add --force to replace the existing key files, or choose another --out or --out-dir", "%s", err)
	}
	if err != nil {
		return err
	}
	where := outFile
	if outDir != "" {
		where = filepath.Join(outDir, "<registration id>.key")
	}
	fmt.Fprintf(e.stdout, "derived the keys of %d group device(s) of %s into %s (mode 0600)\n", n, manifest, where)
	if skipped > 0 {
		fmt.Fprintf(e.stdout, "  skipped %d row(s) with their own credentials (X.509 or symmetric_key)\n", skipped)
	}
	fmt.Fprintf(e.stdout, "  anyone holding these keys can register the devices: keep them on the flashing station only\n")
	return nil
}

// checkKeysOutput refuses outputs that could show keys or replace files by
// surprise: anything but one regular file or folder, a terminal or device,
// an existing file without force.
func checkKeysOutput(outFile, outDir string, force bool) error {
	const hint = "dps-batch keys derive --manifest devices.csv --group-key-file group.key --out device-keys.csv (or --out-dir ./keys)"
	switch {
	case outFile == "" && outDir == "":
		return usagef(hint, "--out or --out-dir is required: keys are written to files, never to the terminal")
	case outFile != "" && outDir != "":
		return usagef(hint, "give --out or --out-dir, not both")
	case outFile == "-":
		return usagef(hint, "refusing to write keys to standard output: give --out a file")
	}
	if outDir != "" {
		fi, err := os.Stat(outDir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil // created with mode 0700
		case err != nil:
			return usagef(hint, "--out-dir %s: %v", outDir, err)
		case !fi.IsDir():
			return usagef(hint, "--out-dir %s is not a directory", outDir)
		}
		return nil
	}
	fi, err := os.Lstat(outFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if parent, err := os.Stat(filepath.Dir(outFile)); err != nil || !parent.IsDir() {
			return usagef(hint, "--out %s: its folder %s does not exist", outFile, filepath.Dir(outFile))
		}
		return nil
	case err != nil:
		return usagef(hint, "--out %s: %v", outFile, err)
	case !fi.Mode().IsRegular():
		return usagef(hint, "refusing to write keys to %s: not a regular file (a terminal, a device or a link?)", outFile)
	case !force:
		return usagef("add --force to replace it, or choose another --out", "%s already exists; refusing to overwrite it without --force", outFile)
	}
	return nil
}

// validateForKeys validates the whole manifest, as provision does, and
// refuses a manifest with problems or without group devices.
func validateForKeys(ctx context.Context, e *env, manifest string, opts manifests.Options) error {
	sum, err := manifests.Validate(ctx, manifest, opts, 200)
	var he *manifests.HeaderError
	switch {
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission):
		return usagef("check the --manifest path", "cannot read the manifest: %v", err)
	case errors.As(err, &he):
		return usagef("the header needs registration_id (README: Manifest format)", "%v", err)
	case err != nil:
		return err
	}
	if !sum.OK() {
		fmt.Fprintf(e.stderr, "Manifest %s has %d problem(s); no key was written:\n", manifest, len(sum.Errors)+sum.TruncatedErrors)
		printGroups(e.stderr, "  ", sum.ErrorGroups, sum.OtherErrors)
		printWarnings(e.stderr, sum)
		fmt.Fprintf(e.stderr, "Fix the rows above and run the same command again.\n")
		return &exitError{code: exitUsage}
	}
	printWarnings(e.stderr, sum)
	if sum.ByKind[manifests.KindGroupKey] == 0 {
		return usagef("group devices are the rows with a registration_id and no cert_path, key_path or symmetric_key",
			"%s has no devices of a symmetric-key enrollment group: nothing to derive; nothing was written", manifest)
	}
	return nil
}

// derivedKey is one group device's derived key, base64.
type derivedKey struct{ id, key string }

// eachDerivedKey calls fn with the derived key of every group device of the
// manifest, in manifest order, and returns how many rows it skipped: those
// with their own credentials. The derivation is the manifest loader's, the
// one provision signs with.
func eachDerivedKey(manifest string, opts manifests.Options, fn func(derivedKey) error) (skipped int, err error) {
	rd, err := manifests.OpenWith(manifest, opts)
	if err != nil {
		return 0, err
	}
	defer rd.Close()
	for {
		row, err := rd.Next()
		if err == io.EOF {
			return skipped, rd.Close()
		}
		if err != nil {
			return skipped, err // Validate passed: only a file changed since can fail here
		}
		if row.CertPath != "" || row.KeyPath != "" || row.ChainPath != "" || row.SymmetricKey != "" {
			skipped++
			continue
		}
		dev, problems := rd.Load(row, opts)
		if dev == nil || dev.Kind != manifests.KindGroupKey {
			return skipped, fmt.Errorf("row %d changed since it was validated: %v", row.Line, problems)
		}
		if err := fn(derivedKey{dev.RegistrationID, base64.StdEncoding.EncodeToString(dev.SymmetricKey)}); err != nil {
			return skipped, err
		}
	}
}

// writeKeysCSV writes every group device's key to one 0600 CSV file.
func writeKeysCSV(manifest string, opts manifests.Options, out string, force bool) (n, skipped int, err error) {
	err = certs.WriteSecretStream(out, force, func(w io.Writer) error {
		cw := csv.NewWriter(w)
		if err := cw.Write([]string{"registration_id", "symmetric_key"}); err != nil {
			return err
		}
		skipped, err = eachDerivedKey(manifest, opts, func(k derivedKey) error {
			n++
			return cw.Write([]string{k.id, k.key})
		})
		if err != nil {
			return err
		}
		cw.Flush()
		return cw.Error()
	})
	return n, skipped, err
}

// writeKeyFiles writes each group device's key to DIR/<id>.key (0600).
// Every target is checked before the first is written, so a refusal leaves
// nothing behind.
func writeKeyFiles(manifest string, opts manifests.Options, dir string, force bool) (n, skipped int, err error) {
	var ids []string
	if _, err := eachDerivedKey(manifest, opts, func(k derivedKey) error {
		if runtime.GOOS == "windows" && strings.ContainsAny(k.id, `:`) {
			return fmt.Errorf("registration id %q cannot be a Windows file name: use --out FILE.csv", k.id)
		}
		ids = append(ids, k.id)
		return nil
	}); err != nil {
		return 0, 0, err
	}
	if !force {
		for _, id := range ids {
			path := filepath.Join(dir, id+".key")
			if _, err := os.Lstat(path); err == nil {
				return 0, 0, fmt.Errorf("%s %w (use --force to overwrite); no key was written", path, certs.ErrExists)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, 0, err
	}
	skipped, err = eachDerivedKey(manifest, opts, func(k derivedKey) error {
		n++
		return certs.WriteSecretFile(filepath.Join(dir, k.id+".key"), []byte(k.key+"\n"), force)
	})
	return n, skipped, err
}
