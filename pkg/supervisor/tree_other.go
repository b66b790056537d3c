//go:build !linux

// Off Linux: no cgroups and no subreaper; New refuses (checkOS), so none of this runs.

package supervisor

import (
	"errors"
	"os/exec"
	"runtime"
	"time"
)

// tree is Linux's; elsewhere no child is ever started.
type tree struct{}

func newTree(string, bool) *tree              { return nil }
func (t *tree) cgroup() (string, error)       { return "", checkOS(runtime.GOOS) }
func (t *tree) release(string) error          { return nil }
func emptyCgroup(string, time.Duration) error { return nil }
func startTracked(*exec.Cmd) error            { return checkOS(runtime.GOOS) }
func untrack(int)                             {}
func enterSubreaper() error                   { return errors.ErrUnsupported }
func leaveSubreaper()                         {}

func (t *tree) start(build func() *exec.Cmd, _ func(string, bool), _ func(error)) (*exec.Cmd, string, error) {
	return build(), "", checkOS(runtime.GOOS)
}
