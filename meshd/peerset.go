package meshd

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/palisade-cc/palisade/keyd/api"
)

// desiredPeer is one peer as keyd lists it, in WireGuard's terms.
type desiredPeer struct {
	NodeID     string
	Key        wgtypes.Key
	AllowedIPs []netip.Prefix // sorted: the /128 and, if any, the /32
	Endpoint   netip.AddrPort // zero: none reported, the peer roams to us
}

// desiredSet turns keyd's peer set into the peers this node must have: every
// listed node except itself (by key: the set includes this node). It rejects
// the whole set if any entry is malformed or two entries collide, because a
// partial set would silently drop peers and a colliding one would route one
// node's mesh address to another's key.
func desiredSet(set *api.PeerSet, self wgtypes.Key) (map[wgtypes.Key]desiredPeer, error) {
	if set == nil {
		return nil, fmt.Errorf("peer set: missing")
	}
	out := make(map[wgtypes.Key]desiredPeer, len(set.Peers))
	ids := make(map[string]bool, len(set.Peers))
	addrs := make(map[netip.Addr]string, 2*len(set.Peers))
	for i, p := range set.Peers {
		where := fmt.Sprintf("peer set revision %d: peers[%d]", set.Revision, i)
		if p.NodeID == "" {
			return nil, fmt.Errorf("%s.node_id: empty", where)
		}
		if ids[p.NodeID] {
			return nil, fmt.Errorf("%s.node_id %q: listed twice", where, p.NodeID)
		}
		ids[p.NodeID] = true
		k, err := wgtypes.NewKey(p.WireGuardKey) // checks the length
		if err != nil {
			return nil, fmt.Errorf("%s (%s).wireguard_key: %d bytes: %w", where, p.NodeID, len(p.WireGuardKey), err)
		}
		if k == (wgtypes.Key{}) {
			return nil, fmt.Errorf("%s (%s).wireguard_key: all zero", where, p.NodeID)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%s (%s).wireguard_key: listed for another node too", where, p.NodeID)
		}
		a6, err := netip.ParseAddr(p.MeshAddress)
		if err != nil || !a6.Is6() || a6.Is4In6() || a6.Zone() != "" {
			return nil, fmt.Errorf("%s (%s).mesh_address %q: want an IPv6 address", where, p.NodeID, p.MeshAddress)
		}
		d := desiredPeer{NodeID: p.NodeID, Key: k, AllowedIPs: []netip.Prefix{netip.PrefixFrom(a6, 128)}}
		if p.MeshIPv4 != "" {
			a4, err := netip.ParseAddr(p.MeshIPv4)
			if err != nil || !a4.Is4() {
				return nil, fmt.Errorf("%s (%s).mesh_ipv4 %q: want an IPv4 address", where, p.NodeID, p.MeshIPv4)
			}
			d.AllowedIPs = append(d.AllowedIPs, netip.PrefixFrom(a4, 32))
		}
		for _, a := range d.AllowedIPs {
			if other, dup := addrs[a.Addr()]; dup {
				return nil, fmt.Errorf("%s (%s): address %v also belongs to %s", where, p.NodeID, a.Addr(), other)
			}
			addrs[a.Addr()] = p.NodeID
		}
		for j, e := range p.Endpoints {
			ap, err := netip.ParseAddrPort(e)
			if err != nil || ap.Port() == 0 {
				return nil, fmt.Errorf("%s (%s).endpoints[%d] %q: want ip:port", where, p.NodeID, j, e)
			}
			if j == 0 {
				d.Endpoint = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			}
		}
		if k == self {
			continue
		}
		out[k] = d
	}
	return out, nil
}

// diff returns the peer changes that turn the device's current peers into
// want, touching only what differs: unchanged peers keep their sessions, so
// applying a set never flaps the interface. prev is the set applied last
// time; an endpoint is written only for a new peer or when keyd's endpoint
// for it changed, so WireGuard's roaming (whitepaper §2.1) is not undone by
// every apply. Peers on the device that keyd does not list are removed,
// whoever added them.
func diff(cur []wgtypes.Peer, want, prev map[wgtypes.Key]desiredPeer, keepalive time.Duration) []wgtypes.PeerConfig {
	var out []wgtypes.PeerConfig
	have := make(map[wgtypes.Key]bool, len(cur))
	for _, p := range cur {
		have[p.PublicKey] = true
		w, ok := want[p.PublicKey]
		if !ok {
			out = append(out, wgtypes.PeerConfig{PublicKey: p.PublicKey, Remove: true})
			continue
		}
		pc := wgtypes.PeerConfig{PublicKey: p.PublicKey, UpdateOnly: true}
		changed := false
		if !sameAllowedIPs(p.AllowedIPs, w.AllowedIPs) {
			pc.ReplaceAllowedIPs, pc.AllowedIPs, changed = true, ipNets(w.AllowedIPs), true
		}
		if p.PersistentKeepaliveInterval != keepalive {
			ka := keepalive
			pc.PersistentKeepaliveInterval, changed = &ka, true
		}
		if w.Endpoint.IsValid() && (p.Endpoint == nil || prev[p.PublicKey].Endpoint != w.Endpoint) &&
			!sameEndpoint(p.Endpoint, w.Endpoint) {
			pc.Endpoint, changed = udpAddr(w.Endpoint), true
		}
		if p.PresharedKey != (wgtypes.Key{}) {
			// meshd uses no pre-shared keys; one set by someone else is
			// dropped so the peer's config is exactly keyd's.
			pc.PresharedKey, changed = new(wgtypes.Key), true
		}
		if changed {
			out = append(out, pc)
		}
	}
	for _, k := range sortedKeys(want) {
		if have[k] {
			continue
		}
		w := want[k]
		ka := keepalive
		pc := wgtypes.PeerConfig{PublicKey: k, ReplaceAllowedIPs: true, AllowedIPs: ipNets(w.AllowedIPs), PersistentKeepaliveInterval: &ka}
		if w.Endpoint.IsValid() {
			pc.Endpoint = udpAddr(w.Endpoint)
		}
		out = append(out, pc)
	}
	return out
}

func sameAllowedIPs(have []net.IPNet, want []netip.Prefix) bool {
	if len(have) != len(want) {
		return false
	}
	seen := make(map[netip.Prefix]bool, len(have))
	for _, n := range have {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			return false
		}
		ones, _ := n.Mask.Size()
		seen[netip.PrefixFrom(a.Unmap(), ones)] = true
	}
	for _, p := range want {
		if !seen[p] {
			return false
		}
	}
	return true
}

func sameEndpoint(have *net.UDPAddr, want netip.AddrPort) bool {
	if have == nil {
		return false
	}
	ap := have.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) == want
}

func ipNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, len(ps))
	for i, p := range ps {
		out[i] = net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	}
	return out
}

func udpAddr(ap netip.AddrPort) *net.UDPAddr { return net.UDPAddrFromAddrPort(ap) }

func sortedKeys(m map[wgtypes.Key]desiredPeer) []wgtypes.Key {
	ks := make([]wgtypes.Key, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	// Deterministic order makes diffs reproducible in logs and tests.
	slicesSortKeys(ks)
	return ks
}

func slicesSortKeys(ks []wgtypes.Key) {
	slices.SortFunc(ks, func(a, b wgtypes.Key) int { return bytes.Compare(a[:], b[:]) })
}
