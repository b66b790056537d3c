package readcap

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestReadAll(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name    string
		in      string
		limit   int64
		wantErr string // "" for no error
	}{
		{"empty", "", 4, ""},
		{"under", "abc", 4, ""},
		{"at the limit", "abcd", 4, ""},
		{"one past", "abcde", 4, "the answer is more than the limit of 4 bytes"},
		{"far past", strings.Repeat("x", 3<<20), 1 << 20, "the answer is more than the limit of 1 MiB"},
		{"zero limit", "a", 0, "the answer is more than the limit of 0 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b, err := ReadAll(strings.NewReader(c.in), c.limit, "the answer")
			if c.wantErr == "" {
				if err != nil || string(b) != c.in {
					t.Fatalf("ReadAll(%d bytes, limit %d): want the input back, got %d bytes and %v", len(c.in), c.limit, len(b), err)
				}
				return
			}
			var tl *TooLargeError
			if !errors.As(err, &tl) || tl.Size != -1 || tl.Limit != c.limit || err.Error() != c.wantErr || b != nil {
				t.Fatalf("ReadAll(%d bytes, limit %d): want *TooLargeError %q and no bytes, got %d bytes and %#v", len(c.in), c.limit, c.wantErr, len(b), err)
			}
		})
	}
}

func TestReadFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, n int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.Repeat("y", n)), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	at := write("at.yaml", 1<<10)
	if b, err := ReadFile(at, 1<<10); err != nil || len(b) != 1<<10 {
		t.Fatalf("ReadFile(%s) at the limit: want 1024 bytes, got %d and %v", at, len(b), err)
	}
	big := write("big.yaml", 3<<20+5<<10)
	_, err := ReadFile(big, 1<<20)
	want := big + " is 3.0 MiB (3150848 bytes), more than the limit of 1 MiB"
	var tl *TooLargeError
	if !errors.As(err, &tl) || tl.Size != 3<<20+5<<10 || err.Error() != want {
		t.Fatalf("ReadFile(%s): want %q with the size, got %#v", big, want, err)
	}
	if _, err := ReadFile(filepath.Join(dir, "missing"), 10); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("ReadFile of a missing file: want fs.ErrNotExist naming it, got %v", err)
	}
	if runtime.GOOS != "windows" {
		// A device does not say how large it is: the read stops past the limit.
		_, err := ReadFile("/dev/zero", 1<<20)
		if !errors.As(err, &tl) || tl.Size != -1 || err.Error() != "/dev/zero is more than the limit of 1 MiB" {
			t.Fatalf("ReadFile(/dev/zero): want the limit error without a size, got %#v", err)
		}
	}
}

func TestSize(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{
		0: "0 bytes", 1023: "1023 bytes", 1024: "1 KiB", 1536: "1.5 KiB (1536 bytes)", 1 << 20: "1 MiB",
		200 << 20: "200 MiB", 926_000_000: "883.1 MiB (926000000 bytes)", 5 << 30: "5 GiB", 1 << 62: "4 EiB",
	} {
		if got := Size(n); got != want {
			t.Errorf("Size(%d): want %q, got %q", n, want, got)
		}
	}
}

func TestCheckFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ok := filepath.Join(dir, "ca.pem")
	big := filepath.Join(dir, "big.pem")
	if err := os.WriteFile(ok, []byte("pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(big, make([]byte, 2<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckFile(ok, 1<<20); err != nil {
		t.Errorf("CheckFile(%s): want nil, got %v", ok, err)
	}
	var tl *TooLargeError
	if err := CheckFile(big, 1<<20); !errors.As(err, &tl) || err.Error() != big+" is 2 MiB, more than the limit of 1 MiB" {
		t.Errorf("CheckFile(%s): want the limit error with its size, got %v", big, err)
	}
	if err := CheckFile(dir, 1<<20); err == nil || err.Error() != dir+" is a directory, not a regular file" {
		t.Errorf("CheckFile(%s): want \"is a directory\", got %v", dir, err)
	}
	if runtime.GOOS != "windows" {
		if err := CheckFile("/dev/zero", 1<<20); err == nil || err.Error() != "/dev/zero is a device, not a regular file" {
			t.Errorf("CheckFile(/dev/zero): want \"is a device\", got %v", err)
		}
	}
	if err := CheckFile(filepath.Join(dir, "missing"), 1); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CheckFile of a missing file: want fs.ErrNotExist, got %v", err)
	}
}
