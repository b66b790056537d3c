// Package platform is the one way lameduck says that a feature does not
// work on the OS at hand, and what to do instead. The features themselves
// keep their OS-specific code behind build tags, so that every package
// builds everywhere; this package only shapes the answer they give at run
// time.
package platform

import "errors"

// UnsupportedError is the error of a feature used on an OS where it cannot
// keep its guarantees. errors.Is(err, errors.ErrUnsupported) is true for
// it, so callers outside this module can tell it from other failures.
type UnsupportedError struct {
	Feature string // what cannot work, such as "lameduck run"
	GOOS    string // where it was asked for (runtime.GOOS)
	Instead string // what to do instead, for the one who reads the error
}

func (e *UnsupportedError) Error() string {
	return e.Feature + " is not supported on " + e.GOOS + "; " + e.Instead
}

// Is makes errors.Is(err, errors.ErrUnsupported) true.
func (e *UnsupportedError) Is(target error) bool { return target == errors.ErrUnsupported }

// LinuxOnly returns nil when goos is "linux", and otherwise an
// *UnsupportedError for feature. Callers pass runtime.GOOS; tests pass
// others.
func LinuxOnly(goos, feature, instead string) error {
	if goos == "linux" {
		return nil
	}
	return &UnsupportedError{Feature: feature, GOOS: goos, Instead: instead}
}
