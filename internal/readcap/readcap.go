// Package readcap reads input from outside the process (a file a user
// names, an HTTP answer) whole, up to a limit: more is a *TooLargeError,
// never a silent cut that would surface later as a confusing parse error,
// and never a read that grows memory with the input.
package readcap

import (
	"fmt"
	"io"
	"io/fs"
	"os"
)

// TooLargeError is input past its limit. Its message names the input, its
// size when known, and the limit.
type TooLargeError struct {
	What  string // the file's path, or what the input is ("the answer")
	Size  int64  // in bytes; -1 when only "more than Limit" is known
	Limit int64  // in bytes
}

func (e *TooLargeError) Error() string {
	if e.Size >= 0 {
		return fmt.Sprintf("%s is %s, more than the limit of %s", e.What, Size(e.Size), Size(e.Limit))
	}
	return fmt.Sprintf("%s is more than the limit of %s", e.What, Size(e.Limit))
}

// ReadAll reads r to its end and returns what it read, or, once more than
// limit bytes have come, a *TooLargeError naming what (with Size -1). It
// holds at most limit+1 bytes. A read error is returned as it is.
func ReadAll(r io.Reader, limit int64, what string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, &TooLargeError{What: what, Size: -1, Limit: limit}
	}
	return b, nil
}

// ReadFile reads the file at path, refusing one of more than limit bytes
// with a *TooLargeError naming path: before reading, with its size, when the
// file says how large it is; otherwise (a pipe, a device) once limit is
// passed. Other errors are those of os.Open and Read, which name the path.
func ReadFile(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > limit {
		return nil, &TooLargeError{What: path, Size: fi.Size(), Limit: limit}
	}
	b, err := ReadAll(f, limit, path)
	if err != nil {
		return nil, err
	}
	return b, nil
}

// CheckFile refuses, before someone else reads the file at path whole (an
// SDK given a path), anything but a regular file of at most limit bytes: a
// device such as /dev/zero, a FIFO or a directory is an error saying so, a
// larger file a *TooLargeError. Stat's errors name the path.
func CheckFile(path string, limit int64) error {
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return fmt.Errorf("%s is %s, not a regular file", path, kind(fi.Mode()))
	case fi.Size() > limit:
		return &TooLargeError{What: path, Size: fi.Size(), Limit: limit}
	}
	return nil
}

func kind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeDevice != 0:
		return "a device"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "special"
}

// Size formats n bytes for a message: "512 bytes", "1 MiB", and, when
// rounded, with the exact count: "1.0 MiB (1048577 bytes)".
func Size(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d bytes", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 5 {
		v /= unit
		i++
	}
	suffix := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}[i]
	if v == float64(int64(v)) {
		return fmt.Sprintf("%d %s", int64(v), suffix)
	}
	return fmt.Sprintf("%.1f %s (%d bytes)", v, suffix, n)
}
