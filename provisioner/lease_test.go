package provisioner

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/palisade-cc/palisade/provisioner/dhcp"
	"github.com/palisade-cc/palisade/provisioner/inventory"
)

// Boots overlap: two machines are acknowledged, and the second one's
// transfer arrives first. The DHCP lease the policy heard decides whose
// transfer it is, not the order the machines asked in.
func TestLeaseAttributesTransfers(t *testing.T) {
	inv, err := inventory.Open(filepath.Join(t.TempDir(), "inv.db"), inventory.Options{DefaultProfile: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	defer inv.Close()
	if err := inv.PutProfile(inventory.Profile{Name: "worker", Image: "uki.efi", Platform: "tpm", Role: "worker"}); err != nil {
		t.Fatal(err)
	}
	var p dhcp.Policy = policy{inv}
	macs := []string{"52:54:00:00:02:01", "52:54:00:00:02:02"}
	for i, m := range macs {
		if _, err := inv.Accept(m, "", "admin"); err != nil {
			t.Fatal(err)
		}
		mac, _ := net.ParseMAC(m)
		if _, err := p.Boot(context.Background(), dhcp.Client{MAC: mac, Arch: 7, PXE: true, MessageType: "REQUEST"}); err != nil {
			t.Fatal(err)
		}
		p.(dhcp.LeaseObserver).Leased(mac, netip.AddrFrom4([4]byte{10, 9, 0, byte(10 + i)}))
	}
	if err := inv.RecordTransfer(inventory.Transfer{Remote: netip.MustParseAddr("10.9.0.11"), File: "uki.efi", Protocol: "tftp", Bytes: 1}); err != nil {
		t.Fatal(err)
	}
	first, _ := inv.Machine(macs[0])
	second, _ := inv.Machine(macs[1])
	if first.State != inventory.Accepted || second.State != inventory.Booting {
		t.Errorf("states after the second machine's transfer: first %s, second %s; want accepted, booting", first.State, second.State)
	}
}
