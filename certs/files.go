package certs

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
)

// File modes for what the package writes: certificates are public, keys are
// readable by their owner only.
const (
	certFileMode fs.FileMode = 0o644
	keyFileMode  fs.FileMode = 0o600
	dirMode      fs.FileMode = 0o755
)

// Paths names the files written for one CA or leaf. FullChain is empty when
// no full-chain file was written.
type Paths struct {
	Cert      string // <base>.pem: the certificate alone
	Key       string // <base>.key: the PKCS#8 private key, mode 0600
	FullChain string // <base>-fullchain.pem: the leaf then its chain, without the root
}

// ErrExists is wrapped by write errors when an output file already exists
// and overwriting was not asked for.
var ErrExists = errors.New("already exists")

// WriteCA writes ca's certificate to DIR/<base>.pem and its key to
// DIR/<base>.key, creating dir if needed. Existing files are left untouched
// unless force is set; either both files are written or neither is.
func WriteCA(dir string, ca *CA, base string, force bool) (Paths, error) {
	keyPEM, err := KeyPEM(ca.Key)
	if err != nil {
		return Paths{}, fmt.Errorf("write CA %q: %w", ca.Cert.Subject.CommonName, err)
	}
	p := Paths{Cert: filepath.Join(dir, base+".pem"), Key: filepath.Join(dir, base+".key")}
	err = writeFiles(force,
		file{p.Cert, CertPEM(ca.Cert), certFileMode},
		file{p.Key, keyPEM, keyFileMode},
	)
	if err != nil {
		return Paths{}, err
	}
	return p, nil
}

// WriteLeaf writes leaf's certificate to DIR/<base>.pem, its key to
// DIR/<base>.key and, when fullChain is set, the leaf followed by its chain
// (without the root: the server already has it) to DIR/<base>-fullchain.pem,
// the file a TLS client presents. Existing files are left untouched unless
// force is set; either all files are written or none is.
func WriteLeaf(dir string, leaf *Leaf, base string, fullChain, force bool) (Paths, error) {
	keyPEM, err := KeyPEM(leaf.Key)
	if err != nil {
		return Paths{}, fmt.Errorf("write certificate %q: %w", leaf.Cert.Subject.CommonName, err)
	}
	p := Paths{Cert: filepath.Join(dir, base+".pem"), Key: filepath.Join(dir, base+".key")}
	files := []file{
		{p.Cert, CertPEM(leaf.Cert), certFileMode},
		{p.Key, keyPEM, keyFileMode},
	}
	if fullChain {
		p.FullChain = filepath.Join(dir, base+"-fullchain.pem")
		files = append(files, file{p.FullChain, CertPEM(append([]*x509.Certificate{leaf.Cert}, leaf.Chain...)...), certFileMode})
	}
	if err := writeFiles(force, files...); err != nil {
		return Paths{}, err
	}
	return p, nil
}

// CSRPaths names the files WriteCSR writes. Key is empty when no key was
// written.
type CSRPaths struct {
	CSR string // <base>.csr: the PKCS#10 CSR, PEM
	Key string // <base>.key: the PKCS#8 private key, mode 0600
}

// WriteCSR writes csrDER as a PEM "CERTIFICATE REQUEST" to DIR/<base>.csr
// and, when key is not nil, key to DIR/<base>.key (mode 0600), creating dir
// if needed. Existing files are left untouched unless force is set; either
// both files are written or neither is.
func WriteCSR(dir, base string, csrDER []byte, key crypto.Signer, force bool) (CSRPaths, error) {
	p := CSRPaths{CSR: filepath.Join(dir, base+".csr")}
	files := []file{{p.CSR, CSRPEM(csrDER), certFileMode}}
	if key != nil {
		keyPEM, err := KeyPEM(key)
		if err != nil {
			return CSRPaths{}, fmt.Errorf("write CSR key %s: %w", base, err)
		}
		p.Key = filepath.Join(dir, base+".key")
		files = append(files, file{p.Key, keyPEM, keyFileMode})
	}
	if err := writeFiles(force, files...); err != nil {
		return CSRPaths{}, err
	}
	return p, nil
}

// WriteCertFile writes certs as PEM to path, refusing to replace an existing
// file unless force is set. The write is atomic.
func WriteCertFile(path string, force bool, certs ...*x509.Certificate) error {
	return writeFiles(force, file{path, CertPEM(certs...), certFileMode})
}

// file is one file to write.
type file struct {
	path string
	data []byte
	mode fs.FileMode
}

// writeFiles writes a set of files that belong together (a certificate and
// its key). Every target is checked first, then each file is written to a
// temporary file in its directory and only when all are complete are they
// renamed into place, so an error never leaves half a set or half a file.
func writeFiles(force bool, files ...file) (err error) {
	if !force {
		for _, f := range files {
			if err := checkAbsent(f.path); err != nil {
				return err
			}
		}
	}
	var temps []string
	defer func() {
		if err != nil {
			for _, t := range temps {
				_ = os.Remove(t)
			}
		}
	}()
	for _, f := range files {
		t, err := writeTemp(f)
		if err != nil {
			return err
		}
		temps = append(temps, t)
	}
	for i, f := range files {
		if err := os.Rename(temps[i], f.path); err != nil {
			return fmt.Errorf("write %s: %w", f.path, err)
		}
	}
	return nil
}

// checkAbsent returns an error naming path when it exists.
func checkAbsent(path string) error {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return fmt.Errorf("%s %w (use --force to overwrite)", path, ErrExists)
	case errors.Is(err, fs.ErrNotExist):
		return nil
	default:
		return fmt.Errorf("check %s: %w", path, err)
	}
}

// writeTemp writes f's data to a new temporary file next to f.path and
// returns its name. The file is synced so the rename that follows cannot
// expose an empty file after a crash.
func writeTemp(f file) (string, error) {
	dir := filepath.Dir(f.path)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return "", fmt.Errorf("create directory for %s: %w", f.path, err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(f.path)+".tmp*")
	if err != nil {
		return "", fmt.Errorf("write %s: %w", f.path, err)
	}
	name := tmp.Name()
	fail := func(err error) (string, error) {
		_ = tmp.Close()
		_ = os.Remove(name)
		return "", fmt.Errorf("write %s: %w", f.path, err)
	}
	// CreateTemp makes the file 0600; set the intended mode explicitly so
	// the umask does not matter either way.
	if err := tmp.Chmod(f.mode); err != nil {
		return fail(err)
	}
	if _, err := tmp.Write(f.data); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		_ = os.Remove(name)
		return "", fmt.Errorf("write %s: %w", f.path, err)
	}
	return name, nil
}

// WriteSecretFile writes data to path with mode 0600 (owner only),
// atomically, refusing to replace an existing file unless force is set: for
// files that hold keys, such as a simulator configuration with symmetric
// keys or derived device keys.
func WriteSecretFile(path string, data []byte, force bool) error {
	return writeFiles(force, file{path, data, keyFileMode})
}

// WriteSecretStream is WriteSecretFile for content streamed by fill, so a
// large file is never held in memory. path's directory must exist.
func WriteSecretStream(path string, force bool, fill func(io.Writer) error) error {
	return writeStream(path, keyFileMode, force, fill)
}

// writeNew writes f only if f.path does not exist yet, atomically and
// durably: f's data goes to a synced temporary file in the same folder,
// which is then hard-linked to f.path. Unlike a rename, the link fails when
// f.path exists, so two writers can never both create it (the loser gets
// ErrExists) and nobody ever sees a partial file. The temporary name is
// removed and the folder synced, so the new name survives a crash.
func writeNew(f file) error {
	tmp, err := writeTemp(f)
	if err != nil {
		return err
	}
	linkErr := os.Link(tmp, f.path)
	_ = os.Remove(tmp)
	switch {
	case errors.Is(linkErr, fs.ErrExist):
		return fmt.Errorf("%s %w", f.path, ErrExists)
	case linkErr != nil:
		return fmt.Errorf("write %s: %w", f.path, linkErr)
	}
	return syncDir(filepath.Dir(f.path))
}

// mkdirDurable creates dir and any missing parents with mode, and syncs the
// folder above each one it created so the new folders survive a crash.
func mkdirDurable(dir string, mode fs.FileMode) error {
	var missing []string
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		_, err := os.Stat(d)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("create directory %s: %w", dir, err)
		}
		missing = append(missing, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, mode); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	for _, d := range missing {
		if err := syncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

// syncDir flushes dir's entries (names created, renamed or removed in it)
// to stable storage. Windows cannot sync a directory; there it does nothing.
func syncDir(dir string) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
