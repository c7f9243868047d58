package qemutests

import (
	"strings"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/qemu-tests/vm"
)

// TestBareMetalDevices: a machine with a physical server's devices instead
// of virtio, an Intel 82574L NIC (e1000e) and an NVMe state disk, PXE-boots
// the production image. Its init loads exactly those two of the image's
// device drivers, because their hardware is present; the node gets its
// lease through the e1000e, attests, and formats and unlocks the NVMe disk.
func TestBareMetalDevices(t *testing.T) {
	vm.Require(t)
	r := newRack(t, "10.81.0.0/24")
	n := diskNode{"metal", "52:54:00:81:00:01", vm.NewSWTPM(t, r.img.CA)}
	r.serve(acceptRule{mac: n.mac, profile: "node", image: r.img.UKI})
	v := vm.Start(t, vm.Config{Name: n.name, TPM: n.tpm, Net: r.net, MAC: n.mac, NIC: vm.NICE1000E,
		Disks: []string{newDisk(t)}, DiskBus: vm.DiskNVMe, MemoryMB: diskMemory})
	m := v.Expect(`msg="device modules" .*matched=(?:"([^"]*)"|(\S*))`, bootTimeout)
	if got := strings.TrimSpace(m[1] + m[2]); got != "e1000e nvme" {
		v.Fail("device modules matched %q, want \"e1000e nvme\" (the image's other NIC and disk drivers have no device here)", got)
	}
	v.Expect(`^attestd: admitted node=`, bootTimeout)
	f := v.Expect(`^attestd: disk: formatted (\S+) uuid=(\S+)`, 2*time.Minute)
	if !strings.HasPrefix(f[1], "/dev/nvme") {
		v.Fail("formatted %s, want the NVMe disk", f[1])
	}
	v.Expect(`^attestd: disk: unlocked \S+ uuid=`+f[2]+` mounted /var`, 2*time.Minute)
}
