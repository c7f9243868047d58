package qemutests

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/qemu-tests/vm"
)

// diskMiB is the state disk's size: the LUKS2 header takes 16 MiB.
const diskMiB = 256

// diskMemory leaves room for the recovery keyslot's argon2id (cryptsetup
// caps its memory at half the RAM) beside the initramfs.
const diskMemory = 2048

func newDisk(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "state.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(diskMiB << 20); err != nil {
		t.Fatal(err)
	}
	return p
}

func copyDisk(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy.img")
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	return dst
}

// partitionOffset reads the first GPT entry's starting LBA (UEFI 2.10
// §5.3: header at LBA 1, entries at the header's PartitionEntryLBA).
func partitionOffset(t *testing.T, disk string) int64 {
	t.Helper()
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, 92)
	if _, err := f.ReadAt(hdr, 512); err != nil || string(hdr[:8]) != "EFI PART" {
		t.Fatalf("%s: no GPT header (%v)", disk, err)
	}
	entries := int64(binary.LittleEndian.Uint64(hdr[72:80])) * 512
	e := make([]byte, 128)
	if _, err := f.ReadAt(e, entries); err != nil {
		t.Fatal(err)
	}
	return int64(binary.LittleEndian.Uint64(e[32:40])) * 512
}

// headerDigest hashes the GPT and the LUKS2 header area.
func headerDigest(t *testing.T, disk string) [32]byte {
	t.Helper()
	f, err := os.Open(disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 20<<20)
	if _, err := io.ReadFull(f, b); err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// diskNode is one machine of the disk tests: its MAC and TPM stay the same
// across boots, as a real machine's do.
type diskNode struct {
	name, mac string
	tpm       *vm.SWTPM
}

func (r *rack) bootDisk(t *testing.T, n diskNode, disk string) *vm.VM {
	t.Helper()
	return vm.Start(t, vm.Config{Name: n.name, TPM: n.tpm, Net: r.net, MAC: n.mac, Disks: []string{disk}, MemoryMB: diskMemory})
}

var stateLine = regexp.MustCompile(`^attestd: disk: state uuid=(\S+) mounts=(\d+) first_mount=(\S+)`)

// TestDisk: a node PXE-boots, attests, formats its virtio disk and writes
// its state record; after a power cut it boots again, attests, unlocks and
// reads the record back. The same disk on a node whose image is not in the
// manifest stays locked and untouched; a copy whose LUKS header was edited
// offline is refused, not formatted.
func TestDisk(t *testing.T) {
	vm.Require(t)
	r := newRack(t, "10.79.0.0/24")
	img := r.img
	a := diskNode{"disk-a", "52:54:00:79:00:01", vm.NewSWTPM(t, img.CA)}
	b := diskNode{"disk-b", "52:54:00:79:00:02", vm.NewSWTPM(t, img.CA)}
	r.serve(acceptRule{mac: a.mac, profile: "node", image: img.UKI},
		acceptRule{mac: b.mac, profile: "tampered", image: tamperCmdline(t, img.UKI)})
	disk := newDisk(t)

	v := r.bootDisk(t, a, disk)
	v.Expect(`^attestd: admitted node=`, bootTimeout)
	m := v.Expect(`^attestd: disk: formatted (\S+) uuid=(\S+)`, 2*time.Minute)
	uuid := m[2]
	v.Expect(`^attestd: disk: unlocked \S+ uuid=`+uuid+` mounted /var`, 2*time.Minute)
	first := v.Expect(stateLine.String(), time.Minute)
	if first[1] != uuid || first[2] != "1" {
		v.Fail("first boot state %v, want uuid %s mounts 1", first[1:], uuid)
	}
	if rec, err := v.WriteTimeline(t.Name()+"/first", "tftp+format"); err == nil {
		t.Logf("first boot:\n%s", rec)
	}
	v.Stop() // the power cut: the record was fsynced before its line

	v = r.bootDisk(t, a, disk)
	v.Expect(`^attestd: disk: unlocked \S+ uuid=`+uuid+` mounted /var`, bootTimeout)
	again := v.Expect(stateLine.String(), time.Minute)
	if again[1] != uuid || again[2] != "2" || again[3] != first[3] {
		v.Fail("after reboot: state %v, want uuid %s, mounts 2, first mount %s", again[1:], uuid, first[3])
	}
	if _, _, ok := v.Console.Find(regexp.MustCompile(`^attestd: disk: formatted`)); ok {
		v.Fail("an in-use disk was formatted again")
	}
	r.waitStatus(t, a.mac, "unlocked")
	if rec, err := v.WriteTimeline(t.Name()+"/reboot", "tftp+unlock"); err == nil {
		t.Logf("reboot:\n%s", rec)
	}
	v.Stop()

	before := headerDigest(t, disk)
	edited := copyDisk(t, disk)
	f, err := os.OpenFile(edited, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A byte of the primary header's JSON area (LUKS2 on-disk format §2:
	// binary header 4 KiB, then JSON).
	off := partitionOffset(t, edited) + 4096 + 64
	one := []byte{0}
	f.ReadAt(one, off)
	one[0] ^= 0x20
	if _, err := f.WriteAt(one, off); err != nil {
		t.Fatal(err)
	}
	f.Close()
	editedBefore := headerDigest(t, edited)

	t.Run("image-not-in-manifest", func(t *testing.T) {
		t.Parallel()
		v := r.bootDisk(t, b, disk)
		v.Expect(`^attestd: denied by keyd`, bootTimeout)
		v.Stop()
		if _, _, ok := v.Console.Find(regexp.MustCompile(`^attestd: disk: (unlocked|formatted)`)); ok {
			t.Error("a denied node unlocked or formatted the disk")
		}
		if headerDigest(t, disk) != before {
			t.Error("the denied node changed the disk's GPT or LUKS header")
		}
	})
	t.Run("header-edited-offline", func(t *testing.T) {
		t.Parallel()
		v := r.bootDisk(t, a, edited)
		v.Expect(`^attestd: disk: refused`, bootTimeout)
		v.Stop()
		if _, _, ok := v.Console.Find(regexp.MustCompile(`^attestd: disk: (unlocked|formatted)`)); ok {
			t.Error("an edited header was unlocked or formatted over")
		}
		if headerDigest(t, edited) != editedBefore {
			t.Error("the edited disk was written to")
		}
	})
}

// TestDiskPowerCut kills the VM at several points of the first format —
// after the GPT is written (before the join), after luksFormat, after the
// first mount — and boots again: the disk always ends in use, unlocked with
// keyd's key for its UUID.
func TestDiskPowerCut(t *testing.T) {
	vm.Require(t)
	r := newRack(t, "10.80.0.0/24")
	img := r.img
	cuts := []struct{ name, at string }{
		{"after-partition", `^attestd: evidence platform=`},
		{"after-luksformat", `^attestd: disk: formatted `},
		{"after-mount", `^attestd: disk: unlocked `},
	}
	var rules []acceptRule
	nodes := make([]diskNode, len(cuts))
	for i, c := range cuts {
		nodes[i] = diskNode{"cut-" + c.name, fmt.Sprintf("52:54:00:80:00:%02x", i+1), vm.NewSWTPM(t, img.CA)}
		rules = append(rules, acceptRule{mac: nodes[i].mac, profile: "node", image: img.UKI})
	}
	r.serve(rules...)
	for i, c := range cuts {
		n := nodes[i]
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			disk := newDisk(t)
			v := r.bootDisk(t, n, disk)
			v.Expect(c.at, bootTimeout+time.Minute)
			v.Stop() // SIGKILL: no flush, no unmount
			v = r.bootDisk(t, n, disk)
			m := v.Expect(`^attestd: disk: unlocked \S+ uuid=(\S+) mounted /var`, bootTimeout+time.Minute)
			st := v.Expect(stateLine.String(), time.Minute)
			if st[1] != m[1] {
				v.Fail("state record of %s on volume %s", st[1], m[1])
			}
			if bytes.Contains([]byte(v.Console.Tail(200)), []byte("refused")) {
				v.Fail("a cut first format was refused")
			}
		})
	}
}
