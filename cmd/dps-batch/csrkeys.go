package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/dps-batch/dps-batch/certs"
	"github.com/dps-batch/dps-batch/dps"
	"github.com/dps-batch/dps-batch/manifests"
)

// generateCSRKeys makes the operational keys --generate-csr-keys DIR asks
// for: DIR/<registration id>.key, a P-384 key (0600), for every row that
// gives neither csr_key_path nor csr_path. Existing key files are kept: a
// key may already be in use. Rows with an unusable id are left to the
// manifest validation that follows, which reports them.
func generateCSRKeys(ctx context.Context, e *env, p *provisionFlags) error {
	rd, err := manifests.OpenWith(p.manifest, manifests.Options{Strict: p.strict, Columns: p.columns, IgnoreCSRColumns: true})
	if err != nil {
		return usagef("check the --manifest path: dps-batch provision --manifest path/to/devices.csv --id-scope 0ne00012345", "cannot read the manifest: %v", err)
	}
	defer rd.Close()
	var made, kept atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0))
	for {
		row, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		var prob manifests.Problem
		if errors.As(err, &prob) {
			continue // validation reports it
		}
		if err != nil {
			_ = g.Wait()
			return err
		}
		if row.CSRKeyPath != "" || row.CSRPath != "" || dps.ValidateRegistrationID(row.RegistrationID, true) != nil {
			continue
		}
		path := filepath.Join(p.csrKeyDir, row.RegistrationID+".key")
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			created, err := certs.EnsureCSRKey(path)
			if err != nil {
				return fmt.Errorf("--generate-csr-keys: row %d (%s): %w", row.Line, row.RegistrationID, err)
			}
			if created {
				made.Add(1)
			} else {
				kept.Add(1)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return &exitError{code: exitResumable, err: errors.New("stopped while making keys; nothing was sent: run the same command again")}
	}
	fmt.Fprintf(e.stderr, "Operational keys in %s: %d made (P-384, mode 0600), %d kept\n", p.csrKeyDir, made.Load(), kept.Load())
	return nil
}
