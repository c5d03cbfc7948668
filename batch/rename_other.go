//go:build !windows

package batch

import "os"

const isWindows = false

// renameDurable renames old over new; the caller fsyncs the folder.
func renameDurable(old, new string) error { return os.Rename(old, new) }

// syncDir makes a rename or a new entry in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
