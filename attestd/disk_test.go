package attestd

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/attestd/disk"
	"github.com/palisade-cc/palisade/internal/diskkey"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/keyd/api"
)

// diskKernel fakes device-mapper and mounts (this host has neither); a
// partition is a file next to the disk image, and Open checks the key
// with the real cryptsetup.
type diskKernel struct{ opens, mounts int }

func (k *diskKernel) PartitionPath(_ context.Context, d string, n int) (string, error) {
	p := fmt.Sprintf("%s.p%d", d, n)
	if _, err := os.Stat(p); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			return "", err
		}
		return p, os.Truncate(p, 32<<20)
	}
	return p, nil
}

func (k *diskKernel) Open(ctx context.Context, part, name string, key []byte) (string, error) {
	out, err := disk.RunProgram(ctx, [][]byte{key}, "cryptsetup", "open", "--test-passphrase", "--type", "luks2", "--key-file=-", part)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 {
		return "", disk.ErrKeyRejected
	}
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, out)
	}
	k.opens++
	return "/dev/mapper/" + name, nil
}

func (k *diskKernel) Close(context.Context, string) error         { return nil }
func (k *diskKernel) Mkfs(context.Context, string) error          { return nil }
func (k *diskKernel) Mount(context.Context, string, string) error { k.mounts++; return nil }

// diskNode is a node's disk across boots, and everything cryptsetup was
// given: argv and the secrets (the very slices, to check they are wiped).
type diskNode struct {
	img     string
	kern    *diskKernel
	argv    []string
	secrets [][]byte // the slices cryptsetup got
	copies  [][]byte // their bytes at the time
}

func newDiskNode(t *testing.T, dir, name string) *diskNode {
	t.Helper()
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		t.Fatal("cryptsetup missing: scripts/deps.sh unit installs it")
	}
	n := &diskNode{img: filepath.Join(dir, name), kern: &diskKernel{}}
	must(t, os.WriteFile(n.img, nil, 0o600))
	must(t, os.Truncate(n.img, 64<<20))
	return n
}

func (n *diskNode) exec(ctx context.Context, secrets [][]byte, name string, args ...string) ([]byte, error) {
	n.argv = append(n.argv, name+" "+strings.Join(args, " "))
	n.secrets = append(n.secrets, secrets...)
	for _, s := range secrets {
		n.copies = append(n.copies, bytes.Clone(s))
	}
	return disk.RunProgram(ctx, secrets, name, args...)
}

func (n *diskNode) formats() int { return n.count("luksFormat") }

// count is the number of cryptsetup runs of command cmd.
func (n *diskNode) count(cmd string) int {
	c := 0
	for _, a := range n.argv {
		if strings.HasPrefix(a, "cryptsetup "+cmd+" ") {
			c++
		}
	}
	return c
}

// runDisk runs attestd with the state-disk step on node's disk.
func (w *world) runDisk(n *diskNode, devices ...string) (*Admission, error) {
	w.t.Helper()
	m, _ := w.snpNode()
	cfg := w.cfg
	if devices == nil {
		devices = []string{} // never the host's own disks
	}
	// The recovery keyslot with argon2id at its cheapest: production
	// leaves the cost to cryptsetup's 2 s benchmark.
	cfg.Disk = disk.Config{Mode: disk.ModeAuto, Devices: devices, MountPoint: filepath.Join(w.dir, "var"),
		RecoveryPBKDF: disk.PBKDF{Iterations: 4, MemoryKiB: 32}}
	deps := Deps{
		Detect:  func(context.Context, *Config, *slog.Logger) (*Machine, error) { return m, nil },
		NodeID:  func() (string, error) { return testNodeID, nil },
		Console: &w.console,
		Disk:    disk.Deps{Exec: n.exec, Kernel: n.kern},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return Run(ctx, cfg, deps, testLogger(w.t))
}

func TestDiskFirstBootThenReboot(t *testing.T) {
	w := newWorld(t, worldOpts{})
	n := newDiskNode(t, w.dir, "vda.img")
	adm, err := w.runDisk(n, n.img)
	must(t, err)
	if len(adm.DiskKeys) != 0 {
		t.Error("the admission still holds disk keys after the disk step")
	}
	out, err := exec.Command("cryptsetup", "luksUUID", n.img+".p1").Output()
	must(t, err)
	u := strings.TrimSpace(string(out))
	for _, want := range []string{"attestd: admitted node=", "attestd: disk: formatted " + n.img + ".p1 uuid=" + u + "\n",
		"attestd: disk: unlocked " + n.img + ".p1 uuid=" + u + " mounted " + filepath.Join(w.dir, "var") + "\n"} {
		if !w.consoleHas(want) {
			t.Errorf("console lacks %q:\n%s", want, w.console.String())
		}
	}
	// keyd recorded the UUID: the node's registry entry claims it.
	w.console.Reset()
	_, err = w.runDisk(n, n.img)
	must(t, err)
	if n.formats() != 1 || n.kern.opens != 2 || !w.consoleHas("attestd: disk: unlocked "+n.img+".p1 uuid="+u) {
		t.Errorf("reboot: %d formats, %d opens, console:\n%s", n.formats(), n.kern.opens, w.console.String())
	}
	checkNoKeyLeak(t, w, n, u)
}

// The owner's recovery passphrase, typed at cryptsetup's prompt, opens
// the formatted disk (keyslot 1); the passphrase of another node or disk
// does not, nor does keyd's key in the recovery slot.
func TestDiskRecoverySlotOpens(t *testing.T) {
	w := newWorld(t, worldOpts{})
	n := newDiskNode(t, w.dir, "vda.img")
	_, err := w.runDisk(n, n.img)
	must(t, err)
	part := n.img + ".p1"
	out, err := exec.Command("cryptsetup", "luksUUID", part).Output()
	must(t, err)
	u := strings.TrimSpace(string(out))
	if n.count("luksAddKey") != 1 {
		t.Fatalf("%d luksAddKey calls, want 1 (the recovery slot):\n%s", n.count("luksAddKey"), strings.Join(n.argv, "\n"))
	}
	typed := func(nodeID, uuid string) []byte {
		rec, err := diskkey.Recovery(w.master, testCluster, nodeID, uuid)
		must(t, err)
		p, err := diskkey.Passphrase(rec)
		must(t, err)
		return append(p, '\n') // as typed: cryptsetup's prompt stops at the newline
	}
	opens := func(stdin []byte) bool {
		cmd := exec.Command("cryptsetup", "open", "--test-passphrase", "--key-slot", "1", part)
		cmd.Stdin = bytes.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 2) {
			t.Fatalf("cryptsetup open: %v: %s", err, out)
		}
		return err == nil
	}
	if !opens(typed(testNodeID, u)) {
		t.Fatal("the owner's recovery passphrase does not open keyslot 1")
	}
	if opens(typed("another-node", u)) {
		t.Error("another node's recovery passphrase opens the disk")
	}
	if opens(typed(testNodeID, "00000000-0000-4000-8000-000000000000")) {
		t.Error("another disk's recovery passphrase opens the disk")
	}
	dk, err := diskkey.Disk(w.master, testCluster, testNodeID, u)
	must(t, err)
	if opens(dk) {
		t.Error("keyd's disk key opens the recovery slot")
	}
	checkNoKeyLeak(t, w, n, u)
}

// A recovery key of the wrong size from keyd refuses the disk before
// cryptsetup runs: the owner could never type what it would make.
func TestDiskRecoveryKeyBadSize(t *testing.T) {
	var console bytes.Buffer
	var calls int
	step, err := disk.New(disk.Config{Mode: disk.ModeAuto, Devices: []string{}, MountPoint: t.TempDir()},
		disk.Deps{Console: &console, Kernel: &diskKernel{},
			Exec: func(context.Context, [][]byte, string, ...string) ([]byte, error) { calls++; return nil, nil }},
		slog.New(slog.DiscardHandler))
	must(t, err)
	sd := &disk.Disk{Device: "/dev/vda", Partition: "/dev/vda1", UUID: testDiskUUID, State: disk.StatePartitioned}
	for _, size := range []int{1, 31, 33, 64} {
		adm := &Admission{DiskKeys: []api.DiskKey{{UUID: testDiskUUID, Key: make([]byte, 64), Recovery: make([]byte, size)}}}
		err := unlockDisk(context.Background(), step, sd, adm)
		if err == nil || !strings.Contains(err.Error(), "keyd's recovery key for uuid="+testDiskUUID) || calls != 0 {
			t.Errorf("recovery key of %d bytes: err %v, %d cryptsetup calls; want a refusal naming it, no call", size, err, calls)
		}
	}
}

// checkNoKeyLeak: the keys cryptsetup received (keyd's disk key, the
// owner's recovery passphrase) are zero now (wiped in place), and no key
// byte reached argv, the console, a file of the run directory or a status
// report to the provisioner; nor did the raw recovery key of uuid.
func checkNoKeyLeak(t *testing.T, w *world, n *diskNode, uuid string) {
	t.Helper()
	if len(n.secrets) == 0 {
		t.Fatal("cryptsetup got no key on a pipe")
	}
	rec, err := diskkey.Recovery(w.master, testCluster, testNodeID, uuid)
	must(t, err)
	pass, err := diskkey.Passphrase(rec)
	must(t, err)
	var gotPass bool
	for _, c := range n.copies {
		gotPass = gotPass || bytes.Equal(c, pass)
	}
	if !gotPass {
		t.Error("cryptsetup never got the recovery passphrase")
	}
	var files bytes.Buffer
	filepath.WalkDir(w.cfg.RunDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			files.Write(b)
		}
		return nil
	})
	argv := strings.Join(n.argv, "\n")
	for _, k := range n.secrets {
		// keyd's disk key and the passphrase text are both 64 bytes.
		if len(k) != 64 && len(k) != diskkey.PassphraseLen {
			t.Errorf("secret of %d bytes, want keyd's 64 or a 64-character passphrase", len(k))
		}
		if !bytes.Equal(k, make([]byte, len(k))) {
			t.Error("a disk key was not zeroed after use")
		}
	}
	for _, k := range append(n.copies, rec) {
		for _, enc := range []string{string(k[:16]), hex.EncodeToString(k[:8]), base64.StdEncoding.EncodeToString(k[:12]),
			base64.RawURLEncoding.EncodeToString(k[:12])} {
			for where, s := range map[string]string{"argv": argv, "run dir": files.String(), "console": w.console.String(),
				"status reports": w.status.raw()} {
				if strings.Contains(s, enc) {
					t.Errorf("key material in %s", where)
				}
			}
		}
	}
}

func TestDiskKeydDeniedLeavesDiskLocked(t *testing.T) {
	// keyd admits against a manifest whose node profile pins another
	// HOST_DATA: this machine's image is not in it.
	w := newWorld(t, worldOpts{admitting: func(m *manifest.Manifest) {
		m.References[0].SNP = cloneSNP(m.References[0].SNP)
		m.References[0].SNP.HostData = bytes.Repeat([]byte{0x22}, 32)
	}})
	n := newDiskNode(t, w.dir, "vda.img")
	_, err := w.runDisk(n, n.img)
	if !errors.Is(err, ErrDenied) || ExitCode(err) != ExitDenied {
		t.Fatalf("err %v (exit %d), want a denial", err, ExitCode(err))
	}
	if n.formats() != 0 || !w.consoleHas("attestd: disk: refused "+n.img+".p1: keyd denied this node") {
		t.Errorf("%d formats; console:\n%s", n.formats(), w.console.String())
	}
}

// A disk swapped for a blank one gets a new UUID, which keyd refuses for a
// node it recorded another disk for: exit 7, the new disk stays locked.
func TestDiskSwappedUUIDRefused(t *testing.T) {
	w := newWorld(t, worldOpts{})
	a := newDiskNode(t, w.dir, "a.img")
	_, err := w.runDisk(a, a.img)
	must(t, err)
	b := newDiskNode(t, w.dir, "b.img")
	w.console.Reset()
	_, err = w.runDisk(b, b.img)
	if !errors.Is(err, disk.ErrUUIDMismatch) || ExitCode(err) != ExitDiskUUID {
		t.Fatalf("err %v (exit %d), want ErrUUIDMismatch, exit %d", err, ExitCode(err), ExitDiskUUID)
	}
	if b.formats() != 0 || !w.consoleHas("attestd: disk: refused "+b.img+".p1: disk LUKS UUID differs") {
		t.Errorf("%d formats; console:\n%s", b.formats(), w.console.String())
	}
	// The original disk still unlocks.
	_, err = w.runDisk(a, a.img)
	must(t, err)
}

func TestDiskless(t *testing.T) {
	w := newWorld(t, worldOpts{})
	n := newDiskNode(t, w.dir, "unused.img")
	adm, err := w.runDisk(n)
	must(t, err)
	if ExitCode(err) != ExitAdmitted || !w.consoleHas("attestd: disk: none (diskless)\n") || len(n.argv) != 0 || adm == nil {
		t.Errorf("diskless: exit %d, argv %q, console:\n%s", ExitCode(err), n.argv, w.console.String())
	}
}

func TestDiskExitCodes(t *testing.T) {
	for err, want := range map[error]int{
		fmt.Errorf("state disk: %w", disk.ErrForeign):       ExitDiskForeign,
		fmt.Errorf("state disk: %w", disk.ErrUUIDMismatch):  ExitDiskUUID,
		fmt.Errorf("state disk: %w", disk.ErrHeaderAltered): ExitDiskHeader,
		fmt.Errorf("state disk: %w", disk.ErrKeyRejected):   ExitDiskHeader,
		fmt.Errorf("state disk: %w", disk.ErrNoRecoveryKey): ExitConfig,
	} {
		if got := ExitCode(err); got != want {
			t.Errorf("ExitCode(%v) = %d, want %d", err, got, want)
		}
	}
}
