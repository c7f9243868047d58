package inventory

import (
	"context"
	"net"
	"net/netip"
	"testing"
)

// FuzzBoot feeds what a DHCP packet controls (UUID, arch, classes, MAC) and
// a transfer's file name into the store: no panic, and a machine that asks
// is always recorded under its canonical MAC.
func FuzzBoot(f *testing.F) {
	s := open(f, Options{NoSync: true, HTTPBase: "http://127.0.0.1:1", DefaultProfile: "worker", Rules: []Rule{{Name: "r", MACPrefix: "02"}}})
	if err := s.PutProfile(worker); err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{2, 0, 0, 0, 0, 1}, []byte{1, 2, 3}, uint16(7), "PXEClient", "iPXE", "uki.efi", true, false)
	f.Add([]byte{2, 0, 0, 0, 0, 2}, make([]byte, 16), uint16(16), "HTTPClient", "", "/../uki.efi?x#y", false, true)
	f.Add([]byte{}, []byte{}, uint16(0xffff), "\xff\xfe", "\x00", "", true, true)
	f.Fuzz(func(t *testing.T, mac, uuid []byte, arch uint16, vendor, user, file string, pxe, http bool) {
		a, err := s.Boot(context.Background(), Request{MAC: mac, UUID: uuid, Arch: arch, VendorClass: vendor, UserClass: user, PXE: pxe, HTTPBoot: http})
		if len(mac) != 6 {
			if err == nil {
				t.Fatalf("MAC of %d bytes accepted", len(mac))
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if a.TFTPFile != "" && a.HTTPURL != "" {
			t.Fatalf("both TFTP and HTTP answers: %+v", a)
		}
		m, err := s.Machine(net.HardwareAddr(mac).String())
		if err != nil {
			t.Fatalf("machine not recorded: %v", err)
		}
		if len(m.VendorClass) > 255 || len(m.UserClass) > 255 {
			t.Fatalf("unbounded class strings stored")
		}
		if err := s.RecordTransfer(Transfer{Remote: netip.AddrFrom4([4]byte{mac[2], mac[3], mac[4], mac[5]}), File: file, Protocol: "tftp"}); err != nil {
			t.Fatal(err)
		}
	})
}
