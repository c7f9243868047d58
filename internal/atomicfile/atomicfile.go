// Package atomicfile writes a file so that a reader, or the next boot after
// a power cut, sees either the old content or the whole new one: a
// temporary file of the final mode in the same directory, fsync, rename,
// fsync of the directory.
//
// It is not a lock: two writers of one path leave the last rename's content.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data, creating its directory (mode 0700) first.
func Write(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // after a successful rename: a no-op
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return err
	}
	// The rename is durable only once the directory entry is.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
