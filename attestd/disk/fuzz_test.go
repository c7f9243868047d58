package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/uuid"
)

// formattedHeader returns the first 64 KiB of a real LUKS2 volume made by
// cryptsetup: both header copies.
func formattedHeader(f *testing.F) []byte {
	f.Helper()
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		f.Fatal("cryptsetup missing: scripts/deps.sh unit installs it")
	}
	p := filepath.Join(f.TempDir(), "p1")
	must(f, os.WriteFile(p, nil, 0o600))
	must(f, os.Truncate(p, partSize))
	_, err := RunProgram(context.Background(), [][]byte{bytes.Repeat([]byte{7}, 64)}, "cryptsetup", "luksFormat", "--batch-mode",
		"--type", "luks2", "--label", LabelInUse, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file=-", p)
	must(f, err)
	b, err := os.ReadFile(p)
	must(f, err)
	return b[:64<<10]
}

// FuzzReadLUKS: header parsing and the in-use policy never panic on any
// bytes a disk may hold. The input is kept small (the binary header's first
// 512 bytes and the JSON text) so the fuzzer's minimisation stays cheap;
// with fix set the checksums are made right, so the JSON parser and the
// policy see the input too.
func FuzzReadLUKS(f *testing.F) {
	hdr := formattedHeader(f)
	js := hdr[luksBinarySize:16384]
	f.Add(hdr[:512], js[:bytes.IndexByte(js, 0)], true)
	f.Add(hdr[:512], js[:bytes.IndexByte(js, 0)], false)
	f.Add([]byte("LUKS\xba\xbe\x00\x02"), []byte("{}"), true)
	f.Fuzz(func(t *testing.T, bin, js []byte, fix bool) {
		if len(bin) > 512 || len(js) > 16384-luksBinarySize {
			return
		}
		vol := make([]byte, 64<<10)
		for i, off := range []int{0, 16384} {
			c := vol[off : off+16384]
			copy(c, bin)
			copy(c[luksBinarySize:], js)
			if fix {
				copy(c, [][]byte{luksMagic1, luksMagic2}[i])
				binary.BigEndian.PutUint64(c[8:], 16384)
				binary.BigEndian.PutUint64(c[luksHdrOffOff:], uint64(off))
				clear(c[luksCsumOff : luksCsumOff+luksCsumLen])
				sum := sha256.Sum256(c)
				copy(c[luksCsumOff:], sum[:])
			}
		}
		h, err := readLUKS(bytes.NewReader(vol))
		if err != nil {
			t.Fatal(err)
		}
		_ = stateOf(h)
		_ = checkInUse(h, uuid.Nil.String(), false)
		_ = checkInUse(h, h.Primary.UUID, true)
	})
}

// FuzzClassify: the whole-disk classification (go-blockdevice's GPT reader
// included) never panics. The input fills the start and the end of a
// small image.
func FuzzClassify(f *testing.F) {
	dir := f.TempDir()
	img := filepath.Join(dir, "seed.img")
	must(f, os.WriteFile(img, nil, 0o600))
	must(f, os.Truncate(img, 4<<20))
	d, err := openDevice(img, true)
	must(f, err)
	_, err = writeTable(d, uuid.New(), nil)
	must(f, err)
	head := make([]byte, 34*512)
	tail := make([]byte, 33*512)
	d.ReadAt(head, 0)
	d.ReadAt(tail, int64(d.size)-int64(len(tail)))
	d.Close()
	// Small seeds (protective MBR and primary header; backup header):
	// the fuzzer minimises what it finds, which is slow on large inputs.
	f.Add(head[:2*512], tail[len(tail)-512:])
	f.Add(head[:2*512], []byte{})
	f.Add([]byte{}, tail[len(tail)-512:])
	mem := make(memDisk, 4<<20)
	f.Fuzz(func(t *testing.T, head, tail []byte) {
		if len(head) > 34*512 || len(tail) > 33*512 {
			return
		}
		clear(mem)
		d := &device{f: mem, size: 4 << 20, sector: 512}
		d.WriteAt(head, 0)
		d.WriteAt(tail, int64(d.size)-int64(len(tail)))
		classify(d)
	})
}

// memDisk is a disk in memory.
type memDisk []byte

func (m memDisk) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(m)) {
		return 0, io.EOF
	}
	n := copy(p, m[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m memDisk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m)) {
		return 0, io.ErrShortWrite
	}
	return copy(m[off:], p), nil
}

func (memDisk) Sync() error  { return nil }
func (memDisk) Close() error { return nil }
