// Package boundedfile reads a whole file that must not exceed a size: a
// configuration, a certificate chain, a manifest bundle. A larger file is an
// error that names it, never a truncated read or an unbounded allocation.
//
// It is not a parser: callers judge the bytes.
package boundedfile

import (
	"fmt"
	"io"
	"os"
)

// Read returns the content of path if it is at most max bytes.
func Read(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// One byte more than allowed tells "too big" from "exactly full".
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, max)
	}
	return b, nil
}
