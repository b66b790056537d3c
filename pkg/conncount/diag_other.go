//go:build !linux

package conncount

import "context"

// readDiag is Linux's; elsewhere Counter reads the tables, which do not
// exist either, and says so.
func readDiag(context.Context, uint16, func(row)) error {
	return errNoDiag
}
