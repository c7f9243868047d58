package attest

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"regexp"
	"slices"
)

// Domain separates Palisade's report data from any other use of the same
// hardware key; BindingVersion changes whenever the encoding does.
const (
	Domain         = "palisade.attest.binding"
	BindingVersion = 1
)

// Sizes of the session values a binding commits to.
const (
	NonceSize    = 32
	ExporterSize = 32
	// ExporterLabel is the RFC 8446 §7.5 exporter label of aTLS.
	ExporterLabel = "EXPORTER-palisade-atls-v1"
)

// Role is what an attester claims to be.
type Role string

// Roles.
const (
	RoleNode Role = "node"
	RoleKeyd Role = "keyd"
)

// Validate reports whether r is a known role.
func (r Role) Validate() error {
	if r != RoleNode && r != RoleKeyd {
		return fmt.Errorf("role %q: want %q or %q", string(r), RoleNode, RoleKeyd)
	}
	return nil
}

// Claims are what an attester says about itself; the binding commits to
// their digest, so they are as trustworthy as the evidence.
type Claims struct {
	NodeID  string `json:"node_id"`
	Role    Role   `json:"role"`
	Profile string `json:"profile"`
	// WireGuardKey is the node's WireGuard public key (32 bytes).
	WireGuardKey []byte `json:"wireguard_key,omitempty"`
	// DiskUUIDs are the LUKS UUIDs of the node's state disks.
	DiskUUIDs []string `json:"disk_uuids,omitempty"`
	// Endpoints are the addresses (host:port) the node can be reached at.
	Endpoints []string `json:"endpoints,omitempty"`
}

var (
	nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)
	uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

// Limits on claims, so a peer cannot make us hash megabytes.
const (
	maxDisks     = 16
	maxEndpoints = 16
	maxEndpoint  = 262
)

// Validate checks every field and names the first bad one.
func (c *Claims) Validate() error {
	if !nameRE.MatchString(c.NodeID) {
		return fmt.Errorf("claims.node_id %q: want 1-63 of [a-z0-9.-], starting and ending alphanumeric", c.NodeID)
	}
	if err := c.Role.Validate(); err != nil {
		return fmt.Errorf("claims.role: %w", err)
	}
	if !nameRE.MatchString(c.Profile) {
		return fmt.Errorf("claims.profile %q: want 1-63 of [a-z0-9.-]", c.Profile)
	}
	if c.WireGuardKey != nil && len(c.WireGuardKey) != 32 {
		return fmt.Errorf("claims.wireguard_key: %d bytes, want 32", len(c.WireGuardKey))
	}
	if len(c.DiskUUIDs) > maxDisks {
		return fmt.Errorf("claims.disk_uuids: %d, at most %d", len(c.DiskUUIDs), maxDisks)
	}
	for i, u := range c.DiskUUIDs {
		if !uuidRE.MatchString(u) {
			return fmt.Errorf("claims.disk_uuids[%d] %q: want a lower-case UUID", i, u)
		}
	}
	if len(c.Endpoints) > maxEndpoints {
		return fmt.Errorf("claims.endpoints: %d, at most %d", len(c.Endpoints), maxEndpoints)
	}
	for i, e := range c.Endpoints {
		if e == "" || len(e) > maxEndpoint {
			return fmt.Errorf("claims.endpoints[%d]: length %d, want 1-%d", i, len(e), maxEndpoint)
		}
	}
	return nil
}

// Digest is SHA-256 over the canonical encoding of the claims: every field
// length-prefixed, lists sorted, so equal claims hash equally.
func (c *Claims) Digest() [32]byte {
	var e encoder
	e.str("palisade.claims.v1")
	e.str(c.NodeID)
	e.str(string(c.Role))
	e.str(c.Profile)
	e.bytes(c.WireGuardKey)
	e.list(c.DiskUUIDs)
	e.list(c.Endpoints)
	return sha256.Sum256(e.b)
}

// Binding is what an attester's report data commits to (ARCHITECTURE §4):
// the domain and version, the attester's role, the cluster, the TLS exporter
// of this connection, the verifier's fresh nonce, and the claims.
type Binding struct {
	Role      Role
	ClusterID string
	// Exporter is the RFC 8446 exporter of the connection (ExporterLabel).
	Exporter []byte
	// Nonce is the verifying peer's fresh nonce.
	Nonce        []byte
	ClaimsDigest [32]byte
}

// Validate checks the binding's own shape.
func (b *Binding) Validate() error {
	if err := b.Role.Validate(); err != nil {
		return fmt.Errorf("binding.role: %w", err)
	}
	if b.ClusterID == "" || len(b.ClusterID) > 64 {
		return fmt.Errorf("binding.cluster_id: length %d, want 1-64", len(b.ClusterID))
	}
	if len(b.Exporter) != ExporterSize {
		return fmt.Errorf("binding.exporter: %d bytes, want %d", len(b.Exporter), ExporterSize)
	}
	if len(b.Nonce) != NonceSize {
		return fmt.Errorf("binding.nonce: %d bytes, want %d", len(b.Nonce), NonceSize)
	}
	return nil
}

func (b *Binding) encode() []byte {
	var e encoder
	e.str(Domain)
	e.u32(BindingVersion)
	e.str(string(b.Role))
	e.str(b.ClusterID)
	e.bytes(b.Exporter)
	e.bytes(b.Nonce)
	e.bytes(b.ClaimsDigest[:])
	return e.b
}

// SHA512 is the 64-byte report data of SEV-SNP and TDX.
func (b *Binding) SHA512() [64]byte { return sha512.Sum512(b.encode()) }

// SHA256 is the TPM quote's qualifying data.
func (b *Binding) SHA256() [32]byte { return sha256.Sum256(b.encode()) }

type encoder struct{ b []byte }

func (e *encoder) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *encoder) bytes(p []byte) {
	e.u32(uint32(len(p)))
	e.b = append(e.b, p...)
}
func (e *encoder) str(s string) { e.bytes([]byte(s)) }
func (e *encoder) list(l []string) {
	s := slices.Clone(l)
	slices.Sort(s)
	e.u32(uint32(len(s)))
	for _, x := range s {
		e.str(x)
	}
}
