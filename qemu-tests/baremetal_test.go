package qemutests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/qemu-tests/vm"
)

// TestBareMetalDevices: a machine with a physical server's devices instead
// of virtio, an Intel 82574L NIC (e1000e) and an NVMe state disk, boots the
// production image. Its init loads exactly those of the image's device
// drivers whose hardware is present (and ahci for q35's SATA controller);
// the node gets its lease and hints through the e1000e, attests, and
// formats and unlocks the NVMe disk.
// The firmware loads the UKI from an ESP, not over the e1000e: QEMU's only
// ROM for it is iPXE, which boots the node itself (a boot path a server's
// own firmware does not take, and whose PCR4 keyd rightly denies); the
// UKI's measurements are the same either way (PCR4: the action and the
// UKI's Authenticode; PCR9, PCR11 from the stub).
func TestBareMetalDevices(t *testing.T) {
	vm.Require(t)
	r := newRack(t, "10.81.0.0/24")
	n := diskNode{"metal", "52:54:00:81:00:01", vm.NewSWTPM(t, r.img.CA)}
	r.serve(acceptRule{mac: n.mac, profile: "node", image: r.img.UKI})
	esp := t.TempDir()
	if err := os.MkdirAll(filepath.Join(esp, "EFI", "BOOT"), 0o755); err != nil {
		t.Fatal(err)
	}
	uki, err := os.ReadFile(r.img.UKI)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(esp, "EFI", "BOOT", "BOOTX64.EFI"), uki, 0o644); err != nil {
		t.Fatal(err)
	}
	v := vm.Start(t, vm.Config{Name: n.name, TPM: n.tpm, Net: r.net, MAC: n.mac, NIC: vm.NICE1000E, ESP: esp,
		Disks: []string{newDisk(t)}, DiskBus: vm.DiskNVMe, MemoryMB: diskMemory})
	m := v.Expect(`msg="device modules" .*matched=(?:"([^"]*)"|(\S*))`, bootTimeout)
	// ahci: q35's own ICH9 SATA controller, as a server's chipset has one.
	if got := strings.TrimSpace(m[1] + m[2]); got != "e1000e nvme ahci" {
		v.Fail("device modules matched %q, want \"e1000e nvme ahci\" (the image's other NIC and disk drivers have no device here)", got)
	}
	v.Expect(`^attestd: admitted node=`, bootTimeout)
	f := v.Expect(`^attestd: disk: formatted (\S+) uuid=(\S+)`, 2*time.Minute)
	if !strings.HasPrefix(f[1], "/dev/nvme") {
		v.Fail("formatted %s, want the NVMe disk", f[1])
	}
	v.Expect(`^attestd: disk: unlocked \S+ uuid=`+f[2]+` mounted /var`, 2*time.Minute)
}
