package attestd

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
)

// DefaultWireGuardPort is meshd's default UDP port (meshd.Config.ListenPort).
const DefaultWireGuardPort = 51820

// maxEndpoints is attest.Claims' limit on endpoints.
const maxEndpoints = 16

// Endpoints returns the addresses peers send WireGuard packets to: every
// global unicast address (IPv4 first, then IPv6; link-local and loopback
// never) of the up interfaces that have a MAC address, at port. Those are
// the interfaces DHCP configured: WireGuard and other tunnel devices have
// no MAC, so meshd's own interface, which may exist when `attestd serve`
// recomputes the claims, never counts. Interfaces are taken in index order
// and addresses sorted, so the join and serve compute the same list.
//
// The endpoints are claims like any other: the evidence commits to them,
// keyd publishes them in the peer set (meshd's peers use the first), and
// `verifier cluster` dials the first one's host at its attestation port.
func Endpoints(ifaces func() ([]net.Interface, error), addrs func(*net.Interface) ([]net.Addr, error), port int) ([]string, error) {
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("endpoints: port %d, want 1-65535", port)
	}
	is, err := ifaces()
	if err != nil {
		return nil, fmt.Errorf("endpoints: list interfaces: %w", err)
	}
	slices.SortFunc(is, func(a, b net.Interface) int { return a.Index - b.Index })
	var v4, v6 []netip.Addr
	for i := range is {
		in := &is[i]
		if in.Flags&net.FlagUp == 0 || in.Flags&net.FlagLoopback != 0 || len(in.HardwareAddr) == 0 {
			continue
		}
		as, err := addrs(in)
		if err != nil {
			return nil, fmt.Errorf("endpoints: addresses of %s: %w", in.Name, err)
		}
		var mine []netip.Addr
		for _, a := range as {
			pfx, err := netip.ParsePrefix(a.String())
			if err != nil {
				continue // not an interface address (net.IPNet)
			}
			ip := pfx.Addr().Unmap()
			if !ip.IsGlobalUnicast() {
				continue // link-local, loopback, multicast, unspecified
			}
			mine = append(mine, ip)
		}
		slices.SortFunc(mine, func(a, b netip.Addr) int { return a.Compare(b) })
		for _, ip := range mine {
			if ip.Is4() {
				v4 = append(v4, ip)
			} else {
				v6 = append(v6, ip)
			}
		}
	}
	var out []string
	for _, ip := range append(v4, v6...) {
		e := net.JoinHostPort(ip.String(), strconv.Itoa(port))
		if !slices.Contains(out, e) && len(out) < maxEndpoints {
			out = append(out, e)
		}
	}
	return out, nil
}

// interfaceAddrs is net.Interface.Addrs as a function value.
func interfaceAddrs(i *net.Interface) ([]net.Addr, error) { return i.Addrs() }
