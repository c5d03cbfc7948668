//go:build windows

package batch

import (
	"errors"
	"time"

	"golang.org/x/sys/windows"
)

const isWindows = true

// renameDurable renames old over new with MOVEFILE_WRITE_THROUGH, so the
// rename is on disk when it returns (Windows cannot fsync a folder). A
// destination held open without delete sharing (an antivirus scan, a
// flashing tool) is retried for a moment.
func renameDurable(old, new string) error {
	from, err := windows.UTF16PtrFromString(old)
	if err != nil {
		return err
	}
	to, err := windows.UTF16PtrFromString(new)
	if err != nil {
		return err
	}
	for i := 0; ; i++ {
		err = windows.MoveFileEx(from, to, windows.MOVEFILE_REPLACE_EXISTING|windows.MOVEFILE_WRITE_THROUGH)
		if err == nil || i == 10 || !(errors.Is(err, windows.ERROR_SHARING_VIOLATION) || errors.Is(err, windows.ERROR_ACCESS_DENIED)) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// syncDir does nothing: MOVEFILE_WRITE_THROUGH made the rename durable.
func syncDir(string) error { return nil }
