package attestd

import (
	"errors"
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestEndpoints: the global addresses of up interfaces with a MAC, IPv4
// first, at the WireGuard port; never loopback, link-local, a down
// interface, or a MAC-less tunnel such as meshd's own WireGuard device
// (which carries the mesh addresses once meshd runs).
func TestEndpoints(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}
	ifs := []net.Interface{
		{Index: 3, Name: "palisade0", Flags: net.FlagUp | net.FlagPointToPoint},
		{Index: 1, Name: "lo", Flags: net.FlagUp | net.FlagLoopback},
		{Index: 2, Name: "eth0", Flags: net.FlagUp, HardwareAddr: mac},
		{Index: 4, Name: "eth1", Flags: 0, HardwareAddr: mac},
		{Index: 5, Name: "eth2", Flags: net.FlagUp, HardwareAddr: mac},
	}
	addrs := map[string][]string{
		"palisade0": {"fdaa::1/64", "10.99.0.1/16"},
		"lo":        {"127.0.0.1/8", "::1/128"},
		"eth0":      {"fe80::5054:ff:fe01:203/64", "2001:db8::7/64", "10.77.0.100/24"},
		"eth1":      {"10.5.0.1/24"},
		"eth2":      {"192.0.2.9/24"},
	}
	fn := func(i *net.Interface) ([]net.Addr, error) {
		var out []net.Addr
		for _, a := range addrs[i.Name] {
			ip, n, err := net.ParseCIDR(a)
			must(t, err)
			n.IP = ip
			out = append(out, n)
		}
		return out, nil
	}
	got, err := Endpoints(func() ([]net.Interface, error) { return ifs, nil }, fn, 51820)
	must(t, err)
	want := []string{"10.77.0.100:51820", "192.0.2.9:51820", "[2001:db8::7]:51820"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("endpoints (-want +got):\n%s", d)
	}
	if _, err := Endpoints(func() ([]net.Interface, error) { return ifs, nil }, fn, 0); err == nil {
		t.Error("port 0 accepted")
	}
	if _, err := Endpoints(func() ([]net.Interface, error) { return nil, errors.New("netlink") }, fn, 1); err == nil {
		t.Error("interface error swallowed")
	}
}
