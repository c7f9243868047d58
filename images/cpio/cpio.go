// Package cpio writes deterministic initramfs archives (cpio "newc", the
// format the kernel unpacks, Documentation/driver-api/early-userspace/buffer-format.rst).
//
// It is not a general cpio library: it only writes, it has no hard links,
// and every entry gets fixed owners, inode numbers and one timestamp.
package cpio

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
)

// Entry is one file in the archive.
type Entry struct {
	// Name is the path inside the archive, without a leading slash.
	Name string
	// Mode holds the permission bits and the type (fs.ModeDir, fs.ModeSymlink).
	Mode fs.FileMode
	// Data is a regular file's content or a symlink's target.
	Data []byte
}

// Archive is a set of entries, written sorted by name so the order never
// depends on how they were added.
type Archive struct {
	entries map[string]Entry
}

// New returns an empty archive.
func New() *Archive { return &Archive{entries: map[string]Entry{}} }

// Add adds e and its missing parent directories (mode 0755). Adding the same
// name twice with different content is an error, so two sources cannot
// silently override each other.
func (a *Archive) Add(e Entry) error {
	e.Name = strings.TrimPrefix(path.Clean("/"+e.Name), "/")
	if e.Name == "" || e.Name == "." {
		return fmt.Errorf("cpio: empty name")
	}
	if old, ok := a.entries[e.Name]; ok {
		if old.Mode == e.Mode && bytes.Equal(old.Data, e.Data) {
			return nil
		}
		if old.Mode.IsDir() && e.Mode.IsDir() {
			return nil
		}
		return fmt.Errorf("cpio: %s added twice with different content", e.Name)
	}
	if d := path.Dir(e.Name); d != "." {
		if err := a.Add(Entry{Name: d, Mode: fs.ModeDir | 0o755}); err != nil {
			return err
		}
	}
	a.entries[e.Name] = e
	return nil
}

// File adds a regular file.
func (a *Archive) File(name string, perm fs.FileMode, data []byte) error {
	return a.Add(Entry{Name: name, Mode: perm & fs.ModePerm, Data: data})
}

// Names returns the sorted entry names.
func (a *Archive) Names() []string {
	n := make([]string, 0, len(a.entries))
	for k := range a.entries {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// mode bits of the newc header (cpio(5)).
const (
	cIFDIR = 0o040000
	cIFREG = 0o100000
	cIFLNK = 0o120000
)

// WriteTo writes the uncompressed archive. Owners are 0:0, every mtime is
// mtime, inode numbers count up in name order.
func (a *Archive) WriteTo(w io.Writer, mtime int64) error {
	var buf bytes.Buffer
	ino := uint32(1)
	for _, name := range a.Names() {
		e := a.entries[name]
		var mode uint32
		nlink := uint32(1)
		switch {
		case e.Mode.IsDir():
			mode, nlink = cIFDIR, 2
		case e.Mode&fs.ModeSymlink != 0:
			mode = cIFLNK
		case e.Mode.IsRegular():
			mode = cIFREG
		default:
			return fmt.Errorf("cpio: %s: unsupported type %s", name, e.Mode.Type())
		}
		mode |= uint32(e.Mode.Perm())
		data := e.Data
		if e.Mode.IsDir() {
			data = nil
		}
		writeHeader(&buf, ino, mode, nlink, uint32(mtime), uint32(len(data)), name)
		buf.Write(data)
		pad(&buf)
		ino++
	}
	writeHeader(&buf, 0, 0, 1, 0, 0, "TRAILER!!!")
	_, err := w.Write(buf.Bytes())
	return err
}

func writeHeader(b *bytes.Buffer, ino, mode, nlink, mtime, size uint32, name string) {
	// magic ino mode uid gid nlink mtime filesize devmajor devminor
	// rdevmajor rdevminor namesize check, all 8 hex digits.
	fmt.Fprintf(b, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, mtime, size, 0, 0, 0, 0, len(name)+1, 0)
	b.WriteString(name)
	b.WriteByte(0)
	pad(b)
}

func pad(b *bytes.Buffer) {
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
}

// Gzip writes the archive gzip-compressed at a fixed level with an empty
// gzip header (no name, mtime 0), so the output depends only on the entries
// and the Go toolchain's compress/flate.
func (a *Archive) Gzip(w io.Writer, mtime int64) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	if err := a.WriteTo(zw, mtime); err != nil {
		return err
	}
	return zw.Close()
}
