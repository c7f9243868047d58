package keyd

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
)

// MeshPrefix is the cluster's IPv6 unique local /64 (RFC 4193 §3.1): fd00::/8,
// a 40-bit global ID and subnet 0. RFC 4193 §3.2.2 derives the global ID
// from a hash of a timestamp and an EUI-64; here it is the first 40 bits of
// SHA-256 over a domain and the cluster ID, so every keyd replica and every
// node computes the same prefix with no coordination, and distinct clusters
// collide no more often than random global IDs.
func MeshPrefix(clusterID string) netip.Prefix {
	h := sha256.Sum256([]byte("palisade.mesh.ula.v1\x00" + clusterID))
	var a [16]byte
	a[0] = 0xfd
	copy(a[1:6], h[:5])
	return netip.PrefixFrom(netip.AddrFrom16(a), 64)
}

// meshCandidate is the attempt-th candidate address of node in prefix: the
// interface ID is a hash of the node ID, so a node keeps its address across
// keyd restarts and replicas; collisions move on to the next attempt.
func meshCandidate(prefix netip.Prefix, nodeID string, attempt uint32) netip.Addr {
	var in []byte
	in = append(in, "palisade.mesh.iid.v1\x00"...)
	in = append(in, nodeID...)
	in = binary.BigEndian.AppendUint32(in, attempt)
	h := sha256.Sum256(in)
	a := prefix.Addr().As16()
	copy(a[8:], h[:8])
	// RFC 5453 reserves interface IDs 0 and fdff:ffff:ffff:ff80-ff (subnet
	// anycast); avoid both by clearing the top bit of the IID's first byte
	// and never using 0.
	a[8] &= 0x7f
	if binary.BigEndian.Uint64(a[8:]) == 0 {
		a[15] = 1
	}
	return netip.AddrFrom16(a)
}

// ipv4At is the n-th host address of p (1-based, skipping the network
// address); ok is false past the last usable host (the broadcast address).
func ipv4At(p netip.Prefix, n uint32) (netip.Addr, bool) {
	if !p.Addr().Is4() || p.Bits() > 30 {
		return netip.Addr{}, false
	}
	size := uint32(1) << (32 - p.Bits())
	if n == 0 || n >= size-1 {
		return netip.Addr{}, false
	}
	b := p.Masked().Addr().As4()
	v := binary.BigEndian.Uint32(b[:]) + n
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b), true
}

// parseIPv4Range checks an optional IPv4 mesh range.
func parseIPv4Range(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("mesh_ipv4 %q: %w", s, err)
	}
	if !p.Addr().Is4() || p.Bits() > 30 || p.Bits() < 8 {
		return netip.Prefix{}, fmt.Errorf("mesh_ipv4 %q: want an IPv4 prefix /8 to /30", s)
	}
	return p.Masked(), nil
}
