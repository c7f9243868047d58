package disk

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/siderolabs/go-blockdevice/v2/partitioning/gpt"
)

const (
	diskSize = 64 << 20
	partSize = 32 << 20
)

func needTools(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		t.Fatal("cryptsetup missing: scripts/deps.sh unit installs it")
	}
}

// fakeKernel stands in for what needs device-mapper and mounts, which this
// host lacks. A partition is a file next to the disk image; Open checks
// the key with the real cryptsetup (--test-passphrase works on files).
type fakeKernel struct {
	dir               string
	opens, mkfs, mnts int
	closes            int
	fail              string // "open", "mkfs" or "mount": a power cut there
}

func (k *fakeKernel) PartitionPath(_ context.Context, disk string, n int) (string, error) {
	p := fmt.Sprintf("%s.p%d", disk, n)
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			return "", err
		}
		if err := os.Truncate(p, partSize); err != nil {
			return "", err
		}
	}
	return p, nil
}

func (k *fakeKernel) Open(ctx context.Context, part, name string, key []byte) (string, error) {
	if k.fail == "open" {
		return "", errPowerCut
	}
	out, err := RunProgram(ctx, [][]byte{key}, "cryptsetup", "open", "--test-passphrase", "--type", "luks2", "--key-file=-", part)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == exitBadPassphrase {
		return "", ErrKeyRejected
	}
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, out)
	}
	k.opens++
	return filepath.Join(k.dir, name), nil
}

func (k *fakeKernel) Close(context.Context, string) error { k.closes++; return nil }

func (k *fakeKernel) Mkfs(context.Context, string) error {
	if k.fail == "mkfs" {
		return errPowerCut
	}
	k.mkfs++
	return nil
}

func (k *fakeKernel) Mount(context.Context, string, string) error {
	if k.fail == "mount" {
		return errPowerCut
	}
	k.mnts++
	return nil
}

// rig is one node's disk across boots.
type rig struct {
	t        *testing.T
	dir      string
	disk     string
	console  bytes.Buffer
	calls    [][]string
	kern     *fakeKernel
	cut      string // cryptsetup subcommand before which power is lost
	gptStop  func(int) bool
	cfg      Config
	key, rec []byte
}

func newRig(t *testing.T) *rig {
	t.Helper()
	needTools(t)
	dir := t.TempDir()
	r := &rig{t: t, dir: dir, disk: filepath.Join(dir, "vda.img"), kern: &fakeKernel{dir: dir},
		key: randBytes(DiskKeySize), rec: randBytes(32)}
	must(t, os.WriteFile(r.disk, nil, 0o600))
	must(t, os.Truncate(r.disk, diskSize))
	r.cfg = Config{Mode: ModeAuto, Devices: []string{r.disk}, MountPoint: filepath.Join(dir, "var"),
		RecoveryPBKDF: PBKDF{Iterations: 4, MemoryKiB: 32}}
	return r
}

func (r *rig) exec(ctx context.Context, secrets [][]byte, name string, args ...string) ([]byte, error) {
	r.calls = append(r.calls, append([]string{name}, args...))
	if r.cut != "" && len(args) > 0 && args[0] == r.cut {
		return nil, errPowerCut
	}
	return RunProgram(ctx, secrets, name, args...)
}

func (r *rig) step() *Step {
	r.t.Helper()
	s, err := New(r.cfg, Deps{Exec: r.exec, Kernel: r.kern, Console: &r.console, gptStop: r.gptStop}, slog.New(slog.DiscardHandler))
	must(r.t, err)
	return s
}

// boot runs one boot's disk step: Prepare, then Unlock with the keys.
func (r *rig) boot() (*Disk, error) {
	r.t.Helper()
	s := r.step()
	d, err := s.Prepare(context.Background())
	if err != nil || d == nil {
		return d, err
	}
	return d, s.Unlock(context.Background(), d, Keys{Disk: r.key, Recovery: r.rec})
}

func (r *rig) part() string { return r.disk + ".p1" }

func (r *rig) count(sub string) int {
	n := 0
	for _, c := range r.calls {
		if len(c) > 1 && c[1] == sub {
			n++
		}
	}
	return n
}

func (r *rig) state() State {
	r.t.Helper()
	h, err := readLUKSPath(r.part())
	must(r.t, err)
	return stateOf(h)
}

// opens reports whether key opens keyslot slot of the partition.
func (r *rig) opens(key []byte, slot string) bool {
	_, err := RunProgram(context.Background(), [][]byte{key}, "cryptsetup", "open", "--test-passphrase", "--type", "luks2",
		"--key-slot", slot, "--key-file=-", r.part())
	return err == nil
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func fileHash(t testing.TB, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	return sha256.Sum256(b)
}

func TestFirstBootThenLaterBoot(t *testing.T) {
	r := newRig(t)
	d, err := r.boot()
	must(t, err)
	if d.State != StatePartitioned {
		t.Errorf("first boot state %s, want partitioned", d.State)
	}
	// The GPT: one partition of Palisade's type and name, whose GUID is
	// the LUKS UUID.
	dev, err := openDevice(r.disk, false)
	must(t, err)
	tab, err := gpt.Read(dev)
	dev.Close()
	must(t, err)
	ps := tab.Partitions()
	if len(ps) != 1 || ps[0].TypeGUID != PartitionType || ps[0].Name != PartitionName || ps[0].PartGUID.String() != d.UUID {
		t.Fatalf("GPT partitions %+v, want one %s/%s with GUID %s", ps, PartitionType, PartitionName, d.UUID)
	}
	out, err := exec.Command("cryptsetup", "luksUUID", r.part()).Output()
	must(t, err)
	if strings.TrimSpace(string(out)) != d.UUID {
		t.Errorf("luksUUID %q, want %s", out, d.UUID)
	}
	if r.state() != StateInUse {
		t.Errorf("after first boot: %s, want in-use", r.state())
	}
	if !r.opens(r.key, "0") || !r.opens(r.rec, "1") || r.opens(r.rec, "0") {
		t.Error("keyslot 0 must open with keyd's key only, keyslot 1 with the recovery key")
	}
	want := []string{"formatted " + r.part() + " uuid=" + d.UUID, "unlocked " + r.part() + " uuid=" + d.UUID + " mounted " + r.cfg.MountPoint}
	for _, w := range want {
		if !strings.Contains(r.console.String(), "attestd: disk: "+w+"\n") {
			t.Errorf("console lacks %q:\n%s", w, r.console.String())
		}
	}
	if r.kern.mkfs != 1 || r.kern.mnts != 1 {
		t.Errorf("first boot: mkfs %d, mounts %d, want 1, 1", r.kern.mkfs, r.kern.mnts)
	}

	// Later boot: the same UUID, opened and mounted, never formatted.
	r.calls, r.console = nil, bytes.Buffer{}
	d2, err := r.boot()
	must(t, err)
	if d2.State != StateInUse || d2.UUID != d.UUID {
		t.Errorf("later boot: %s uuid=%s, want in-use uuid=%s", d2.State, d2.UUID, d.UUID)
	}
	if n := r.count("luksFormat"); n != 0 || r.kern.mkfs != 1 || r.kern.mnts != 2 {
		t.Errorf("later boot: %d luksFormat, mkfs total %d, mounts total %d; want 0, 1, 2", n, r.kern.mkfs, r.kern.mnts)
	}
	if !strings.Contains(r.console.String(), "attestd: disk: unlocked "+r.part()+" uuid="+d.UUID+" mounted ") {
		t.Errorf("console: %s", r.console.String())
	}
	// The state record was written on the first mount and counted again:
	// the node found its own data.
	if !regexp.MustCompile(`attestd: disk: state uuid=` + d.UUID + ` mounts=2 first_mount=\S+\n`).MatchString(r.console.String()) {
		t.Errorf("later boot: no state record of a second mount:\n%s", r.console.String())
	}
	// A record naming another volume is not this disk's: refused.
	rec := filepath.Join(r.cfg.MountPoint, StateFile)
	b, err := os.ReadFile(rec)
	must(t, err)
	must(t, os.WriteFile(rec, bytes.Replace(b, []byte(d.UUID), []byte("00000000-0000-4000-8000-000000000000"), 1), 0o600))
	r.console = bytes.Buffer{}
	if _, err := r.boot(); err == nil || !strings.Contains(err.Error(), "names volume 00000000-0000-4000-8000-000000000000") {
		t.Errorf("state record of another volume: %v", err)
	}
}

func TestDiskless(t *testing.T) {
	r := newRig(t)
	r.cfg.Devices = []string{}
	s := r.step()
	d, err := s.Prepare(context.Background())
	if d != nil || err != nil {
		t.Fatalf("no disks: %v, %v; want nil, nil", d, err)
	}
	if r.console.String() != "attestd: disk: none (diskless)\n" {
		t.Errorf("console %q", r.console.String())
	}
	// Off: no disk is even looked at.
	r.cfg = Config{}
	if r.step().Enabled() {
		t.Error("zero Config enabled the disk step")
	}
}

// foreignDisks are disks Palisade must never touch.
func foreignDisks(t *testing.T, dir string) map[string]string {
	t.Helper()
	mk := func(name string, fill func(f *os.File)) string {
		p := filepath.Join(dir, name)
		must(t, os.WriteFile(p, nil, 0o600))
		must(t, os.Truncate(p, diskSize))
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		must(t, err)
		fill(f)
		f.Close()
		return p
	}
	ds := map[string]string{}
	ds["mbr"] = mk("mbr.img", func(f *os.File) {
		mbr := make([]byte, 512)
		mbr[446+4] = 0x83 // a Linux partition
		binary.LittleEndian.PutUint32(mbr[446+8:], 2048)
		mbr[510], mbr[511] = 0x55, 0xaa
		f.WriteAt(mbr, 0)
	})
	ds["data at 1 MiB"] = mk("data.img", func(f *os.File) { f.WriteAt([]byte("some file system"), 1<<20+1024) })
	ds["someone else's GPT entries only"] = mk("entries.img", func(f *os.File) {
		f.WriteAt(guidBytes(uuid.MustParse("0fc63daf-8483-4772-8e79-3d69d8477de4")), 2*512)
	})
	ds["data in last MiB"] = mk("tail.img", func(f *os.File) { f.WriteAt([]byte("x"), diskSize-4096) })
	ds["other GPT"] = mk("gpt.img", func(f *os.File) {
		d := &device{f: f, size: diskSize, sector: 512}
		tab, err := gpt.New(d)
		must(t, err)
		_, _, err = tab.AllocatePartition(8<<20, "root", uuid.MustParse("0fc63daf-8483-4772-8e79-3d69d8477de4"))
		must(t, err)
		must(t, tab.Write())
	})
	ds["GPT with a second partition"] = mk("two.img", func(f *os.File) {
		d := &device{f: f, size: diskSize, sector: 512}
		tab, err := gpt.New(d)
		must(t, err)
		_, _, err = tab.AllocatePartition(8<<20, PartitionName, PartitionType)
		must(t, err)
		_, _, err = tab.AllocatePartition(8<<20, "other", uuid.MustParse("0fc63daf-8483-4772-8e79-3d69d8477de4"))
		must(t, err)
		must(t, tab.Write())
	})
	ds["ours, misnamed"] = mk("name.img", func(f *os.File) {
		d := &device{f: f, size: diskSize, sector: 512}
		tab, err := gpt.New(d)
		must(t, err)
		_, _, err = tab.AllocatePartition(8<<20, "palisade-other", PartitionType)
		must(t, err)
		must(t, tab.Write())
	})
	return ds
}

func TestForeignDisksNeverTouched(t *testing.T) {
	r := newRig(t)
	for name, p := range foreignDisks(t, r.dir) {
		t.Run(name, func(t *testing.T) {
			r.console.Reset()
			r.calls = nil
			before := fileHash(t, p)
			r.cfg.Devices = []string{p}
			_, err := r.step().Prepare(context.Background())
			if !errors.Is(err, ErrForeign) {
				t.Fatalf("err %v, want ErrForeign", err)
			}
			if fileHash(t, p) != before || len(r.calls) != 0 {
				t.Errorf("foreign disk changed or cryptsetup ran (%q)", r.calls)
			}
			for _, w := range []string{"attestd: disk: skipped " + p + ": ", "attestd: disk: refused: "} {
				if !strings.Contains(r.console.String(), w) {
					t.Errorf("console lacks %q:\n%s", w, r.console.String())
				}
			}
			if _, err := os.Stat(p + ".p1"); err == nil {
				t.Error("a partition of a foreign disk was opened")
			}
		})
	}
	// A blank disk next to a foreign one is used; the foreign one is not
	// touched.
	mbr := foreignDisks(t, t.TempDir())["mbr"]
	before := fileHash(t, mbr)
	r.cfg.Devices = []string{mbr, r.disk}
	d, err := r.boot()
	must(t, err)
	if d.Device != r.disk || fileHash(t, mbr) != before {
		t.Errorf("state disk %s (want %s); foreign disk changed: %v", d.Device, r.disk, fileHash(t, mbr) != before)
	}
}

// A LUKS header left where the partition will start makes a disk
// foreign, not blank.
func TestStaleLUKSWithoutGPTIsForeign(t *testing.T) {
	r := newRig(t)
	_, err := r.boot()
	must(t, err)
	// Put the in-use header at 1 MiB of a disk without GPT.
	img := filepath.Join(r.dir, "nogpt.img")
	must(t, os.WriteFile(img, nil, 0o600))
	must(t, os.Truncate(img, diskSize))
	hdr := make([]byte, 64<<10)
	f, err := os.Open(r.part())
	must(t, err)
	f.ReadAt(hdr, 0)
	f.Close()
	g, err := os.OpenFile(img, os.O_RDWR, 0)
	must(t, err)
	g.WriteAt(hdr, 1<<20)
	g.Close()
	r.cfg.Devices = []string{img}
	if _, err := r.step().Prepare(context.Background()); !errors.Is(err, ErrForeign) {
		t.Fatalf("err %v, want ErrForeign", err)
	}
}

func TestTwoStateDisksRefused(t *testing.T) {
	r := newRig(t)
	_, err := r.boot()
	must(t, err)
	second := filepath.Join(r.dir, "vdb.img")
	b, err := os.ReadFile(r.disk)
	must(t, err)
	must(t, os.WriteFile(second, b, 0o600))
	r.cfg.Devices = []string{r.disk, second}
	if _, err := r.step().Prepare(context.Background()); !errors.Is(err, ErrHeaderAltered) || !strings.Contains(err.Error(), "ambiguous") {
		t.Fatalf("two state disks: %v, want an ambiguity refusal", err)
	}
}

// TestPowerCuts cuts the first format at every step; the next boot must
// end in an in-use disk that opens with keyd's key, and the UUID must be
// the one partitioning wrote whenever it could have been claimed.
func TestPowerCuts(t *testing.T) {
	cases := []struct {
		name string
		cut  func(r *rig)
		// sameUUID: the UUID on disk after the cut is the one used.
		sameUUID bool
		after    State
	}{
		{"gpt before entries", func(r *rig) { r.gptStop = func(rank int) bool { return rank == 0 } }, false, StateBlank},
		{"gpt after entries", func(r *rig) { r.gptStop = func(rank int) bool { return rank == 1 } }, false, StateBlank},
		{"gpt after backup header", func(r *rig) { r.gptStop = func(rank int) bool { return rank == 2 } }, true, StatePartitioned},
		{"gpt after primary header", func(r *rig) { r.gptStop = func(rank int) bool { return rank == 3 } }, true, StatePartitioned},
		{"before luksFormat", func(r *rig) { r.cut = "luksFormat" }, true, StatePartitioned},
		{"before recovery slot", func(r *rig) { r.cut = "luksAddKey" }, true, StateFormattedNew},
		{"before format check", func(r *rig) { r.cut = "luksUUID" }, true, StateFormattedNew},
		{"before open", func(r *rig) { r.kern.fail = "open" }, true, StateFormattedNew},
		{"before mkfs", func(r *rig) { r.kern.fail = "mkfs" }, true, StateFormattedNew},
		{"before mount", func(r *rig) { r.kern.fail = "mount" }, true, StateFormattedNew},
		{"before in-use label", func(r *rig) { r.cut = "config" }, true, StateFormattedNew},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t)
			c.cut(r)
			s := r.step()
			d1, err := s.Prepare(context.Background())
			if err == nil {
				err = s.Unlock(context.Background(), d1, Keys{Disk: r.key, Recovery: r.rec})
			}
			if !errors.Is(err, errPowerCut) {
				t.Fatalf("cut boot: %v, want the power cut", err)
			}
			// What the disk looks like after the cut.
			dev, err := openDevice(r.disk, false)
			must(t, err)
			k, p, why, err := classify(dev)
			dev.Close()
			must(t, err)
			got := StateBlank
			onDisk := ""
			if k == kindOurs {
				onDisk = p.PartGUID.String()
				_, err := r.kern.PartitionPath(context.Background(), r.disk, 1)
				must(t, err)
				got = r.state()
			} else if k != kindBlank {
				t.Fatalf("after the cut the disk is foreign: %s", why)
			}
			if got != c.after {
				t.Errorf("after the cut: %s, want %s", got, c.after)
			}
			// Next boot, power stays on.
			r.cut, r.gptStop, r.kern.fail = "", nil, ""
			d2, err := r.boot()
			must(t, err)
			if d1 != nil && d1.UUID != onDisk {
				t.Errorf("claimed UUID %s, GPT has %s", d1.UUID, onDisk)
			}
			if c.sameUUID && d2.UUID != onDisk {
				t.Errorf("UUID changed across the cut: %s → %s", onDisk, d2.UUID)
			}
			if r.state() != StateInUse || !r.opens(r.key, "0") {
				t.Errorf("after the next boot: %s, keyd key opens: %v", r.state(), r.opens(r.key, "0"))
			}
		})
	}
}

// A torn luksFormat (one header copy written, the other not or half)
// was never used: it is formatted again.
func TestTornFormatIsFormattedAgain(t *testing.T) {
	for _, c := range []struct {
		name string
		off  int64
	}{{"primary torn", 4096 + 100}, {"secondary torn", 16384 + 4096 + 100}} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t)
			r.cut = "luksAddKey"
			_, err := r.boot()
			if !errors.Is(err, errPowerCut) {
				t.Fatal(err)
			}
			flip(t, r.part(), c.off)
			r.cut = ""
			d, err := r.boot()
			must(t, err)
			if d.State != StateFormattedNew || r.count("luksFormat") != 2 || r.state() != StateInUse {
				t.Errorf("state %s, %d luksFormat calls, now %s", d.State, r.count("luksFormat"), r.state())
			}
		})
	}
}

// A power cut during the relabel leaves one copy of each label: the
// volume is in use (never formatted again) and the next boot completes
// the relabel.
func TestTornRelabelIsInUse(t *testing.T) {
	r := newRig(t)
	r.cut = "config"
	_, err := r.boot()
	if !errors.Is(err, errPowerCut) {
		t.Fatal(err)
	}
	newHdr := readRange(t, r.part(), 16384, 16384)
	r.cut = ""
	d, err := r.step().Prepare(context.Background())
	must(t, err)
	must(t, r.step().Unlock(context.Background(), d, Keys{Disk: r.key, Recovery: r.rec}))
	// Roll the secondary copy back to its palisade-new version.
	writeRange(t, r.part(), 16384, newHdr)
	h, err := readLUKSPath(r.part())
	must(t, err)
	if !h.Primary.Valid || !h.Secondary.Valid || h.Primary.Label != LabelInUse || h.Secondary.Label != LabelNew {
		t.Fatalf("setup: primary %+v secondary %+v", h.Primary.Label, h.Secondary.Label)
	}
	formats := r.count("luksFormat")
	d, err = r.boot()
	must(t, err)
	h, err = readLUKSPath(r.part())
	must(t, err)
	if d.State != StateInUse || r.count("luksFormat") != formats || h.Primary.Label != LabelInUse || h.Secondary.Label != LabelInUse {
		t.Errorf("state %s, luksFormat %d→%d, labels %q %q", d.State, formats, r.count("luksFormat"), h.Primary.Label, h.Secondary.Label)
	}
}

// An in-use disk is never formatted again, whatever fails.
func TestInUseNeverFormattedAgain(t *testing.T) {
	r := newRig(t)
	_, err := r.boot()
	must(t, err)
	formats := r.count("luksFormat")
	for _, fail := range []string{"open", "mount"} {
		r.kern.fail = fail
		if _, err := r.boot(); err == nil {
			t.Fatalf("%s failing: no error", fail)
		}
		r.kern.fail = ""
	}
	// keyd's key of another disk (or a wrong one).
	good := r.key
	r.key = randBytes(DiskKeySize)
	if _, err := r.boot(); !errors.Is(err, ErrKeyRejected) {
		t.Errorf("wrong key: %v, want ErrKeyRejected", err)
	}
	r.key = good
	if r.count("luksFormat") != formats || r.kern.mkfs != 1 || r.state() != StateInUse {
		t.Errorf("in-use disk formatted again: luksFormat %d→%d, mkfs %d", formats, r.count("luksFormat"), r.kern.mkfs)
	}
	_, err = r.boot()
	must(t, err)
}

func flip(t *testing.T, p string, off int64) {
	t.Helper()
	b := readRange(t, p, off, 1)
	writeRange(t, p, off, []byte{b[0] ^ 0x20})
}

func readRange(t *testing.T, p string, off, n int64) []byte {
	t.Helper()
	f, err := os.Open(p)
	must(t, err)
	defer f.Close()
	b := make([]byte, n)
	_, err = f.ReadAt(b, off)
	must(t, err)
	return b
}

func writeRange(t *testing.T, p string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	_, err = f.WriteAt(b, off)
	must(t, err)
}

// rewriteCopy edits the JSON area of the header copy at off and recomputes
// its checksum: an edit only a header-policy check can catch.
func rewriteCopy(t *testing.T, p string, off int64, edit func(js []byte) []byte) {
	t.Helper()
	whole := readRange(t, p, off, 16384)
	js := whole[luksBinarySize:]
	n := bytes.IndexByte(js, 0)
	edited := edit(bytes.Clone(js[:n]))
	if len(edited) > len(js) {
		t.Fatal("edited JSON too long")
	}
	clear(js)
	copy(js, edited)
	clear(whole[luksCsumOff : luksCsumOff+luksCsumLen])
	sum := sha256.Sum256(whole)
	copy(whole[luksCsumOff:], sum[:])
	writeRange(t, p, off, whole)
}

// TestHeaderAlteredRefused: start from a valid in-use disk, change one
// thing, assert refusal, and that the disk is neither formatted nor
// repaired.
func TestHeaderAlteredRefused(t *testing.T) {
	base := newRig(t)
	_, err := base.boot()
	must(t, err)
	pristineDisk, err := os.ReadFile(base.disk)
	must(t, err)
	pristinePart, err := os.ReadFile(base.part())
	must(t, err)
	cases := []struct {
		name  string
		edit  func(t *testing.T, r *rig)
		integ bool
		want  string
	}{
		{"byte flipped in primary JSON", func(t *testing.T, r *rig) { flip(t, r.part(), 4096+10) }, false, "checksum mismatch"},
		{"byte flipped in secondary JSON", func(t *testing.T, r *rig) { flip(t, r.part(), 16384+4096+10) }, false, "checksum mismatch"},
		{"secondary copy wiped", func(t *testing.T, r *rig) { writeRange(t, r.part(), 16384, make([]byte, 4096)) }, false, "secondary LUKS2 header copy missing"},
		{"cipher_null, checksums recomputed", func(t *testing.T, r *rig) {
			for _, off := range []int64{0, 16384} {
				rewriteCopy(t, r.part(), off, func(js []byte) []byte {
					return bytes.Replace(js, []byte(`"encryption":"aes-xts-plain64","sector_size"`), []byte(`"encryption":"cipher_null","sector_size"`), 1)
				})
			}
		}, false, "crypt/cipher_null"},
		{"reencryption requirement", func(t *testing.T, r *rig) {
			for _, off := range []int64{0, 16384} {
				rewriteCopy(t, r.part(), off, func(js []byte) []byte {
					return bytes.Replace(js, []byte(`"config":{`), []byte(`"config":{"requirements":{"mandatory":["online-reencrypt-v2"]},`), 1)
				})
			}
		}, false, "mandatory requirements"},
		{"integrity required, absent", func(t *testing.T, r *rig) {}, true, `integrity "", want "hmac(sha256)"`},
		{"LUKS UUID not the partition's", func(t *testing.T, r *rig) {
			_, err := RunProgram(context.Background(), nil, "cryptsetup", "luksUUID", "--batch-mode", "--uuid", uuid.NewString(), r.part())
			must(t, err)
		}, false, "partition GUID"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t)
			r.key, r.rec = base.key, base.rec
			must(t, os.WriteFile(r.disk, pristineDisk, 0o600))
			must(t, os.WriteFile(r.part(), pristinePart, 0o600))
			r.cfg.Integrity = c.integ
			c.edit(t, r)
			edited := fileHash(t, r.part())
			_, err := r.boot()
			if !errors.Is(err, ErrHeaderAltered) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want ErrHeaderAltered with %q", err, c.want)
			}
			if !strings.Contains(r.console.String(), "attestd: disk: refused "+r.part()+": LUKS2 header altered") {
				t.Errorf("console:\n%s", r.console.String())
			}
			if fileHash(t, r.part()) != edited || r.count("luksFormat") != 0 || r.kern.opens != 0 {
				t.Errorf("refused disk was changed, formatted or opened: %q", r.calls)
			}
		})
	}
	// The same edit made between discovery and unlock is caught too.
	r := newRig(t)
	r.key, r.rec = base.key, base.rec
	must(t, os.WriteFile(r.disk, pristineDisk, 0o600))
	must(t, os.WriteFile(r.part(), pristinePart, 0o600))
	s := r.step()
	d, err := s.Prepare(context.Background())
	must(t, err)
	flip(t, r.part(), 4096+10)
	if err := s.Unlock(context.Background(), d, Keys{Disk: r.key}); !errors.Is(err, ErrHeaderAltered) || r.kern.opens != 0 {
		t.Errorf("edit after discovery: %v, opens %d", err, r.kern.opens)
	}
}

func TestRecoveryKeyRequired(t *testing.T) {
	r := newRig(t)
	s := r.step()
	d, err := s.Prepare(context.Background())
	must(t, err)
	if err := s.Unlock(context.Background(), d, Keys{Disk: r.key}); !errors.Is(err, ErrNoRecoveryKey) {
		t.Fatalf("format without recovery key: %v, want ErrNoRecoveryKey", err)
	}
	if len(r.calls) != 0 || !strings.Contains(r.console.String(), "attestd: disk: refused "+r.part()+": no owner recovery key") {
		t.Errorf("calls %q, console %q", r.calls, r.console.String())
	}
	// Test images may opt out; the disk then has one keyslot only.
	r.cfg.WithoutRecoverySlot = true
	r.rec = nil
	_, err = r.boot()
	must(t, err)
	if r.count("luksAddKey") != 0 || !r.opens(r.key, "0") || !strings.Contains(r.console.String(), "WARNING: "+r.part()+" has no recovery keyslot") {
		t.Errorf("without recovery slot: calls %q console %q", r.calls, r.console.String())
	}
}

func TestKeyOfWrongSize(t *testing.T) {
	r := newRig(t)
	s := r.step()
	d, err := s.Prepare(context.Background())
	must(t, err)
	if err := s.Unlock(context.Background(), d, Keys{Recovery: r.rec}); !errors.Is(err, ErrUUIDMismatch) || len(r.calls) != 0 {
		t.Errorf("no key: %v, calls %q", err, r.calls)
	}
}

// The format's cryptsetup arguments, integrity included (dm-integrity's
// wipe needs device-mapper, so the run stops before cryptsetup).
func TestFormatArguments(t *testing.T) {
	r := newRig(t)
	r.cfg.Integrity = true
	r.cut = "luksFormat"
	if _, err := r.boot(); !errors.Is(err, errPowerCut) {
		t.Fatal(err)
	}
	got := strings.Join(r.calls[0], " ")
	for _, w := range []string{"luksFormat --batch-mode --type luks2 --cipher aes-xts-plain64 --key-size 512 --uuid ",
		"--label palisade-new", "--integrity hmac-sha256", "--key-file=- " + r.part()} {
		if !strings.Contains(got, w) {
			t.Errorf("luksFormat args %q lack %q", got, w)
		}
	}
}

// No key byte reaches argv or the console, in any encoding.
func TestKeysNotInArgvOrConsole(t *testing.T) {
	r := newRig(t)
	_, err := r.boot()
	must(t, err)
	_, err = r.boot()
	must(t, err)
	var argv strings.Builder
	for _, c := range r.calls {
		argv.WriteString(strings.Join(c, "\x00"))
	}
	for _, k := range [][]byte{r.key, r.rec} {
		for _, enc := range []string{string(k[:16]), hex.EncodeToString(k[:8]), base64.StdEncoding.EncodeToString(k[:12])} {
			if strings.Contains(argv.String(), enc) || strings.Contains(r.console.String(), enc) {
				t.Fatalf("key material in argv or console")
			}
		}
	}
	if !slices.ContainsFunc(r.calls, func(c []string) bool { return slices.Contains(c, "--key-file=-") }) {
		t.Error("keys not passed on stdin")
	}
}

func TestSysBlockDisks(t *testing.T) {
	root := t.TempDir()
	for _, n := range []string{"vda", "vdb", "loop0", "dm-0", "zram0", "sr0", "nvme0n1", "ram1"} {
		must(t, os.MkdirAll(filepath.Join(root, n), 0o755))
	}
	must(t, os.WriteFile(filepath.Join(root, "vdb", "ro"), []byte("1\n"), 0o644))
	got, err := sysBlockDisks(root)
	must(t, err)
	if want := []string{"/dev/nvme0n1", "/dev/vda"}; !slices.Equal(got, want) {
		t.Errorf("disks %q, want %q", got, want)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{{Mode: "maybe"}, {Mode: ModeAuto, MountPoint: "var"}, {Mode: ModeAuto, MapperName: "a/b"},
		{Mode: ModeAuto, RecoveryPBKDF: PBKDF{Iterations: -1}}} {
		if _, err := New(c, Deps{}, slog.New(slog.DiscardHandler)); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}
