package main

import (
	"flag"

	"github.com/dps-batch/dps-batch/manifests"
)

// addManifestFlags registers the flags that say how to read a manifest's
// header, shared by provision and keys derive: --strict and the repeatable
// --column.
func addManifestFlags(fs *flag.FlagSet, strict *bool, columns *manifests.ColumnMap) {
	fs.BoolVar(strict, "strict", false, "refuse manifest columns dps-batch does not know (by default they are ignored, with one warning naming them)")
	fs.Var(columns, "column", "read a manifest column under one of our names: `OURS=YOURS` reads the column YOURS as OURS, e.g. registration_id=serial_number; repeat it for more columns")
}
