package supervisor

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"testing"
)

func TestRSS(t *testing.T) {
	t.Parallel()
	if n, err := rss(os.Getpid()); err != nil || n == 0 {
		t.Fatalf("want this process's resident memory, got %d, %v", n, err)
	}
	// A process reaped by Wait is gone from /proc.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatalf("run a child to reap: %v", err)
	}
	if n, err := rss(cmd.Process.Pid); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("want an error wrapping fs.ErrNotExist for reaped process %d, got %d, %v", cmd.Process.Pid, n, err)
	}
}
