package disk

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/google/uuid"
	"github.com/siderolabs/go-blockdevice/v2/block"
	"github.com/siderolabs/go-blockdevice/v2/partitioning/gpt"
	"golang.org/x/sys/unix"
)

// PartitionType is Palisade's own GPT partition type GUID for the state
// partition (UEFI 2.10 §5.3.3: type GUIDs are vendor-defined; this one was
// generated at random for Palisade and is documented in docs/attestd.md).
// Discovery goes by this type and PartitionName, never by device name.
var PartitionType = uuid.MustParse("8577593c-39e3-4c8c-99fd-592912715650")

// PartitionName is the GPT partition name of the state partition.
const PartitionName = "palisade-state"

// Blank-disk test regions: a whole disk is blank only if its first 2 MiB
// (protective MBR, primary GPT, and the first MiB of where the state
// partition begins, so a LUKS header left there is seen) and its last MiB
// (backup GPT) are all zero.
const (
	blankHead = 2 << 20
	blankTail = 1 << 20
	// gptEntriesSize is the partition entry array go-blockdevice writes
	// (128 entries of 128 bytes, UEFI 2.10 §5.3.2).
	gptEntriesSize = 128 * 128
)

// store is the bytes of a whole disk: an *os.File, or memory in fuzzing.
type store interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Close() error
}

// device is a whole disk: a block device or, in tests, a regular image file.
// It satisfies go-blockdevice's gpt.Device.
type device struct {
	f      store
	blk    *block.Device // nil for a regular file
	size   uint64
	sector uint
}

var _ gpt.Device = (*device)(nil)

func openDevice(path string, write bool) (*device, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	d := &device{f: f, sector: 512}
	switch {
	case st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0:
		d.blk = block.NewFromFile(f)
		if d.size, err = d.blk.GetSize(); err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: size: %w", path, err)
		}
		d.sector = d.blk.GetSectorSize()
	case st.Mode().IsRegular():
		d.size = uint64(st.Size())
	default:
		f.Close()
		return nil, fmt.Errorf("%s: neither a block device nor an image file", path)
	}
	return d, nil
}

func (d *device) Close() error                                    { return d.f.Close() }
func (d *device) ReadAt(p []byte, off int64) (int, error)         { return d.f.ReadAt(p, off) }
func (d *device) WriteAt(p []byte, off int64) (int, error)        { return d.f.WriteAt(p, off) }
func (d *device) GetSectorSize() uint                             { return d.sector }
func (d *device) GetSize() uint64                                 { return d.size }
func (d *device) Sync() error                                     { return d.f.Sync() }
func (d *device) lastLBA() uint64                                 { return d.size/uint64(d.sector) - 1 }
func (d *device) entriesLBAs() uint64                             { return gptEntriesSize / uint64(d.sector) }
func (d *device) sectorOff(lba uint64) int64                      { return int64(lba * uint64(d.sector)) }
func (d *device) KernelPartitionResize(int, uint64, uint64) error { return errors.New("not supported") }

func (d *device) GetIOSize() (uint, error) {
	if d.blk != nil {
		return d.blk.GetIOSize()
	}
	return d.sector, nil
}

// The kernel is told about new partitions (BLKPG) only for block devices;
// an image file has no kernel partitions.
func (d *device) GetKernelLastPartitionNum() (int, error) {
	if d.blk != nil {
		return d.blk.GetKernelLastPartitionNum()
	}
	return 0, nil
}

func (d *device) KernelPartitionAdd(no int, start, length uint64) error {
	if d.blk != nil {
		return d.blk.KernelPartitionAdd(no, start, length)
	}
	return nil
}

func (d *device) KernelPartitionDelete(no int) error {
	if d.blk != nil {
		return d.blk.KernelPartitionDelete(no)
	}
	return nil
}

// kind is what discovery makes of a whole disk.
type kind int

const (
	kindForeign kind = iota // another partition table or other data: never touched
	kindBlank               // all zero where a GPT would be, or an incomplete GPT of ours
	kindOurs                // a valid GPT whose only partition is the state partition
)

// classify reads the disk's GPT areas. It returns the state partition for
// kindOurs and, for the others, why.
func classify(d *device) (kind, *gpt.Partition, string, error) {
	if d.size < blankHead+blankTail || d.size%uint64(d.sector) != 0 {
		return kindForeign, nil, fmt.Sprintf("size %d bytes is too small for a state disk", d.size), nil
	}
	head := make([]byte, blankHead)
	tail := make([]byte, blankTail)
	if _, err := d.ReadAt(head, 0); err != nil {
		return 0, nil, "", fmt.Errorf("read first %d bytes: %w", blankHead, err)
	}
	tailOff := int64(d.size) - blankTail
	if _, err := d.ReadAt(tail, tailOff); err != nil {
		return 0, nil, "", fmt.Errorf("read last %d bytes: %w", blankTail, err)
	}
	if allZero(head) && allZero(tail) {
		return kindBlank, nil, "blank", nil
	}
	t, err := gpt.Read(d)
	if err != nil {
		if incompleteOurs(d, head, tail, tailOff) {
			return kindBlank, nil, "incomplete GPT of a first format", nil
		}
		return kindForeign, nil, fmt.Sprintf("no valid GPT but data in its first or last MiB (%v)", err), nil
	}
	var parts []*gpt.Partition
	for _, p := range t.Partitions() {
		if p != nil {
			parts = append(parts, p)
		}
	}
	if len(parts) == 1 && parts[0].TypeGUID == PartitionType && parts[0].Name == PartitionName &&
		t.Partitions()[0] == parts[0] {
		return kindOurs, parts[0], "", nil
	}
	if slices.ContainsFunc(parts, func(p *gpt.Partition) bool { return p.TypeGUID == PartitionType }) {
		return kindForeign, nil, fmt.Sprintf("GPT with %d partitions, one of Palisade's type: not a layout Palisade writes", len(parts)), nil
	}
	return kindForeign, nil, fmt.Sprintf("GPT with %d partitions of other types", len(parts)), nil
}

// incompleteOurs reports whether the only data in the GPT areas is what
// writeTable puts there first: the partition entry arrays, holding exactly
// one entry of Palisade's type. Such a disk lost power while being
// partitioned, before its UUID was ever claimed from keyd.
func incompleteOurs(d *device, head, tail []byte, tailOff int64) bool {
	pStart := d.sectorOff(2)
	bStart := d.sectorOff(d.lastLBA() - d.entriesLBAs())
	if !zeroOutside(head, 0, pStart, pStart+gptEntriesSize) || !zeroOutside(tail, tailOff, bStart, bStart+gptEntriesSize) {
		return false
	}
	prim := head[pStart : pStart+gptEntriesSize]
	back := tail[bStart-tailOff : bStart-tailOff+gptEntriesSize]
	some := false
	for _, arr := range [][]byte{prim, back} {
		if allZero(arr) {
			continue
		}
		some = true
		if !ourEntryArray(arr) {
			return false
		}
	}
	return some
}

// ourEntryArray: entry 0 has Palisade's type GUID (mixed-endian on disk,
// UEFI 2.10 Appendix A), every other entry is zero.
func ourEntryArray(arr []byte) bool {
	return bytes.Equal(arr[:16], guidBytes(PartitionType)) && allZero(arr[128:])
}

func guidBytes(u uuid.UUID) []byte {
	b := u[:]
	return []byte{b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]}
}

// zeroOutside reports whether buf (at disk offset base) is zero outside
// the disk range [lo, hi).
func zeroOutside(buf []byte, base, lo, hi int64) bool {
	end := base + int64(len(buf))
	lo, hi = min(max(lo, base), end), min(max(hi, base), end)
	return allZero(buf[:lo-base]) && allZero(buf[hi-base:])
}

var zeros = make([]byte, 64<<10)

// allZero compares with memequal, chunk by chunk: a byte loop is slow
// under the fuzzer's comparison tracing.
func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// writeTable partitions a blank disk: one partition of Palisade's type
// over the whole usable range, whose unique GUID is the LUKS UUID to be.
// go-blockdevice writes the primary header first; orderedWrites holds its
// writes back and applies them in an order whose every prefix classify
// recognises: entry arrays, backup header, primary header, protective MBR,
// with a flush between. A cut after the backup header leaves a GPT
// go-blockdevice reads from the backup copy; before it, only entry arrays
// of ours, which classify treats as blank.
func writeTable(d *device, partGUID uuid.UUID, stop func(rank int) bool) (*gpt.Partition, error) {
	o := &orderedWrites{device: d, stop: stop}
	t, err := gpt.New(o)
	if err != nil {
		return nil, err
	}
	_, p, err := t.AllocatePartition(t.LargestContiguousAllocatable(), PartitionName, PartitionType,
		gpt.WithUniqueGUID(partGUID))
	if err != nil {
		return nil, fmt.Errorf("allocate state partition: %w", err)
	}
	if err := t.Write(); err != nil {
		return nil, fmt.Errorf("write GPT: %w", err)
	}
	return &p, nil
}

type pendingWrite struct {
	off int64
	b   []byte
}

type orderedWrites struct {
	*device
	pending []pendingWrite
	// stop, if set (tests), ends the flush before the write of this rank:
	// a power cut.
	stop func(rank int) bool
}

func (o *orderedWrites) WriteAt(p []byte, off int64) (int, error) {
	o.pending = append(o.pending, pendingWrite{off, bytes.Clone(p)})
	return len(p), nil
}

// ReadAt sees pending writes (go-blockdevice reads the MBR sector back
// before it writes the protective MBR).
func (o *orderedWrites) ReadAt(p []byte, off int64) (int, error) {
	n, err := o.device.ReadAt(p, off)
	for _, w := range o.pending {
		lo, hi := max(off, w.off), min(off+int64(len(p)), w.off+int64(len(w.b)))
		if lo < hi {
			copy(p[lo-off:hi-off], w.b[lo-w.off:hi-w.off])
		}
	}
	return n, err
}

// rank orders the writes: 0 entry arrays, 1 backup header, 2 primary
// header, 3 protective MBR.
func (o *orderedWrites) rank(off int64) int {
	switch off {
	case 0:
		return 3
	case o.sectorOff(1):
		return 2
	case o.sectorOff(o.lastLBA()):
		return 1
	}
	return 0
}

func (o *orderedWrites) Sync() error {
	for r := 0; r <= 3; r++ {
		if o.stop != nil && o.stop(r) {
			return errPowerCut
		}
		for _, w := range o.pending {
			if o.rank(w.off) != r {
				continue
			}
			if _, err := o.device.WriteAt(w.b, w.off); err != nil {
				return err
			}
		}
		if err := o.device.Sync(); err != nil {
			return err
		}
	}
	o.pending = nil
	return nil
}

// errPowerCut is a test's simulated power cut.
var errPowerCut = errors.New("simulated power cut")

var _ io.ReaderAt = (*orderedWrites)(nil)
