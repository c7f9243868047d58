// Package api is keyd's versioned wire protocol (/v1/…): the request and
// response types of every endpoint and a small client that speaks them over
// mutual attested TLS (internal/atls).
//
// It is not keyd: it holds no keys and makes no trust decision; other
// components import it and nothing else of keyd (ARCHITECTURE §2 rule 4).
package api

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Version is the API version in every path.
const Version = "v1"

// Paths of the endpoints. Attested peers (nodes, keyd replicas) and the
// owner's unattested verifier CLI reach different subsets; see
// UnattestedAllowed.
const (
	PathAdmit            = "/v1/admit"
	PathPeers            = "/v1/peers"
	PathInit             = "/v1/init"
	PathRecover          = "/v1/recover"
	PathRevoke           = "/v1/revoke"
	PathReenrol          = "/v1/reenrol"
	PathReplicaJoin      = "/v1/replica/join"
	PathNodes            = "/v1/nodes"
	PathLogCheckpoint    = "/v1/log/checkpoint"
	PathLogEntries       = "/v1/log/entries"
	PathLogInclusion     = "/v1/log/proof/inclusion"
	PathLogConsistency   = "/v1/log/proof/consistency"
	PathStatus           = "/v1/status"
	PathManifest         = "/v1/manifest"
	HeaderRetryAfter     = "Retry-After"
	MaxRequestBody       = 64 << 10
	MasterSecretSize     = 32
	DiskKeySize          = 64
	RecoveryKeySize      = 32
	OwnerRequestMaxSkew  = 5 * time.Minute
	OwnerNonceSize       = 16
	MaxPeersWait         = 60 * time.Second
	DefaultPeersWait     = 25 * time.Second
	MaxLogEntriesPerPage = 1000
)

// UnattestedAllowed is the explicit allow-list of what a peer that sent no
// evidence (the owner's verifier CLI) may call. Everything that hands out a
// secret or the peer directory is missing from it on purpose: admit, peers
// and replica join require a verified peer.
var UnattestedAllowed = map[string]bool{
	PathInit:           true,
	PathRecover:        true,
	PathRevoke:         true,
	PathReenrol:        true,
	PathNodes:          true,
	PathLogCheckpoint:  true,
	PathLogEntries:     true,
	PathLogInclusion:   true,
	PathLogConsistency: true,
	PathStatus:         true,
	// The signed manifest is public, and a node needs it before it can
	// judge keyd: it checks the signature with its own pinned key.
	PathManifest: true,
}

// Error is the body of every non-2xx answer. A denial never says why: the
// reason is in keyd's log, not on the wire.
type Error struct {
	Error string `json:"error"`
}

// Generic error strings on the wire.
const (
	ErrTextDenied     = "denied"
	ErrTextRetryLater = "retry later"
	ErrTextLocked     = "keyd has no master secret yet: init, recover or replica join"
)

// DiskKey is the key of one LUKS volume.
type DiskKey struct {
	UUID string `json:"uuid"`
	// Key is 64 bytes (aes-xts-plain64, 512-bit): keyslot 0.
	Key []byte `json:"key"`
	// Recovery is the owner's 32-byte recovery key of the same disk,
	// derived from the master secret the owner keeps offline (docs/keyd.md
	// §Keys). The node renders it as a passphrase (internal/diskkey) for
	// keyslot 1 at format; empty from a keyd that predates it.
	Recovery []byte `json:"recovery,omitempty"`
}

// Peer is one admitted, unrevoked node in the mesh.
type Peer struct {
	NodeID       string   `json:"node_id"`
	WireGuardKey []byte   `json:"wireguard_key,omitempty"`
	MeshAddress  string   `json:"mesh_address"`
	MeshIPv4     string   `json:"mesh_ipv4,omitempty"`
	Endpoints    []string `json:"endpoints,omitempty"`
}

// PeerSet is the mesh peer set at a revision; the revision grows with
// every change.
type PeerSet struct {
	Revision uint64 `json:"revision"`
	Peers    []Peer `json:"peers"`
}

// AdmitRequest is empty on purpose: everything keyd trusts about the node
// comes from the aTLS handshake (its verified evidence and the claims it
// committed to). A body, if any, is ignored.
type AdmitRequest struct{}

// AdmitResponse is what an admitted node receives.
type AdmitResponse struct {
	NodeID      string    `json:"node_id"`
	DiskKeys    []DiskKey `json:"disk_keys"`
	MeshAddress string    `json:"mesh_address"`
	MeshIPv4    string    `json:"mesh_ipv4,omitempty"`
	// Peers is the peer set including this node. When the set is larger
	// than keyd's inline limit it is omitted and only PeersRevision is
	// set: the node fetches it with GET /v1/peers?since=0.
	Peers         *PeerSet `json:"peers,omitempty"`
	PeersRevision uint64   `json:"peers_revision"`
	// LogIndex is the admission record's index in the admission log and
	// Checkpoint a signed checkpoint (note format) that includes it.
	LogIndex   uint64 `json:"log_index"`
	Checkpoint []byte `json:"checkpoint"`
	// Kube is the node's kubeadm join material, when keyd issues it (and
	// the Kubernetes API answered): absent otherwise.
	Kube *KubeJoin `json:"kube,omitempty"`
}

// ClusterConfig is what the owner sets once at init.
type ClusterConfig struct {
	// MeshIPv4 is an optional IPv4 range (CIDR) nodes get addresses from,
	// next to their IPv6 ULA address.
	MeshIPv4 string `json:"mesh_ipv4,omitempty"`
}

// InitRequest hands keyd the master secret, once.
type InitRequest struct {
	ClusterID    string        `json:"cluster_id"`
	MasterSecret []byte        `json:"master_secret"`
	Config       ClusterConfig `json:"config"`
	// OwnerKey is the owner's Ed25519 public key: it signs revocations
	// and re-enrolments from now on.
	OwnerKey []byte `json:"owner_key"`
}

// RecoverRequest hands the master secret back to a keyd that lost it; keyd
// accepts only the secret whose commitment it stored at init.
type RecoverRequest struct {
	MasterSecret []byte `json:"master_secret"`
}

// ReplicaJoinResponse hands the master secret to an attested keyd replica.
type ReplicaJoinResponse struct {
	ClusterID    string `json:"cluster_id"`
	MasterSecret []byte `json:"master_secret"`
	LogIndex     uint64 `json:"log_index"`
}

// Status says whether keyd can admit.
type Status struct {
	ClusterID       string `json:"cluster_id"`
	Unlocked        bool   `json:"unlocked"`
	Initialised     bool   `json:"initialised"`
	SecurityVersion uint64 `json:"security_version"`
}

// Owner actions, signed by the owner key.
const (
	ActionRevokeNode    = "revoke-node"
	ActionRevokeVersion = "revoke-version"
	ActionReenrolDisks  = "reenrol-disks"
)

// OwnerRequest is an owner-signed command. The signature covers
// SigningBytes, which include the cluster, a timestamp and a random nonce:
// keyd accepts it only within OwnerRequestMaxSkew of its clock and only once
// (it remembers nonces until they are too old to verify anyway).
type OwnerRequest struct {
	Action    string `json:"action"`
	ClusterID string `json:"cluster_id"`
	NodeID    string `json:"node_id,omitempty"`
	// SecurityVersion: revoke-version denies every image whose security
	// version is at or below it.
	SecurityVersion uint64 `json:"security_version,omitempty"`
	// Timestamp is Unix seconds.
	Timestamp int64  `json:"timestamp"`
	Nonce     []byte `json:"nonce"`
	Signature []byte `json:"signature"`
}

var nodeIDRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// ownerDomain separates owner signatures from any other use of the key.
const ownerDomain = "palisade.keyd.owner-request.v1"

// SigningBytes is the canonical encoding the owner signs: every field
// length-prefixed in a fixed order, so no two requests share bytes.
func (r *OwnerRequest) SigningBytes() []byte {
	var b []byte
	str := func(s string) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	str(ownerDomain)
	str(r.Action)
	str(r.ClusterID)
	str(r.NodeID)
	b = binary.BigEndian.AppendUint64(b, r.SecurityVersion)
	b = binary.BigEndian.AppendUint64(b, uint64(r.Timestamp))
	str(string(r.Nonce))
	return b
}

// Sign sets Signature with key.
func (r *OwnerRequest) Sign(key ed25519.PrivateKey) {
	r.Signature = ed25519.Sign(key, r.SigningBytes())
}

// Validate checks the request's shape and names the first bad field.
func (r *OwnerRequest) Validate() error {
	switch r.Action {
	case ActionRevokeNode, ActionReenrolDisks:
		if !nodeIDRE.MatchString(r.NodeID) {
			return fmt.Errorf("owner request.node_id %q: want a node ID", r.NodeID)
		}
		if r.SecurityVersion != 0 {
			return fmt.Errorf("owner request.security_version: must be empty for %s", r.Action)
		}
	case ActionRevokeVersion:
		if r.NodeID != "" {
			return fmt.Errorf("owner request.node_id: must be empty for %s", r.Action)
		}
		if r.SecurityVersion == 0 {
			return fmt.Errorf("owner request.security_version: 0, want ≥ 1")
		}
	default:
		return fmt.Errorf("owner request.action %q: want %q, %q or %q", r.Action, ActionRevokeNode, ActionRevokeVersion, ActionReenrolDisks)
	}
	if r.ClusterID == "" || len(r.ClusterID) > 64 {
		return fmt.Errorf("owner request.cluster_id: length %d, want 1-64", len(r.ClusterID))
	}
	if r.Timestamp <= 0 {
		return fmt.Errorf("owner request.timestamp: %d, want Unix seconds", r.Timestamp)
	}
	if len(r.Nonce) != OwnerNonceSize {
		return fmt.Errorf("owner request.nonce: %d bytes, want %d", len(r.Nonce), OwnerNonceSize)
	}
	if len(r.Signature) != ed25519.SignatureSize {
		return fmt.Errorf("owner request.signature: %d bytes, want %d", len(r.Signature), ed25519.SignatureSize)
	}
	return nil
}

// Verify checks the signature with the owner key and the timestamp against
// now. Replay (the same nonce twice) is keyd's to check: it needs state.
func (r *OwnerRequest) Verify(owner ed25519.PublicKey, clusterID string, now time.Time) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if len(owner) != ed25519.PublicKeySize {
		return errors.New("owner key: not an Ed25519 public key")
	}
	if r.ClusterID != clusterID {
		return fmt.Errorf("owner request.cluster_id %q: this cluster is %q", r.ClusterID, clusterID)
	}
	t := time.Unix(r.Timestamp, 0)
	if d := now.Sub(t); d > OwnerRequestMaxSkew || d < -OwnerRequestMaxSkew {
		return fmt.Errorf("owner request.timestamp %s: more than %s from keyd's clock %s", t.UTC().Format(time.RFC3339), OwnerRequestMaxSkew, now.UTC().Format(time.RFC3339))
	}
	if !ed25519.Verify(owner, r.SigningBytes(), r.Signature) {
		return errors.New("owner request.signature: does not verify with the owner key")
	}
	return nil
}

// Node is one registry entry, as the owner's verifier sees it.
type Node struct {
	NodeID          string            `json:"node_id"`
	Role            string            `json:"role"`
	Profile         string            `json:"profile"`
	Platform        string            `json:"platform"`
	HardwareID      string            `json:"hardware_id"`
	TCB             string            `json:"tcb"`
	Measurements    map[string]string `json:"measurements"`
	SecurityVersion uint64            `json:"security_version"`
	WireGuardKey    []byte            `json:"wireguard_key,omitempty"`
	Endpoints       []string          `json:"endpoints,omitempty"`
	DiskUUIDs       []string          `json:"disk_uuids"`
	MeshAddress     string            `json:"mesh_address"`
	MeshIPv4        string            `json:"mesh_ipv4,omitempty"`
	FirstAdmitted   time.Time         `json:"first_admitted"`
	LastAdmitted    time.Time         `json:"last_admitted"`
	// LogIndex is the log index of the latest admission record.
	LogIndex uint64 `json:"log_index"`
	Revoked  bool   `json:"revoked"`
}

// Nodes is the registry.
type Nodes struct {
	Nodes []Node `json:"nodes"`
	// RevokedVersion: images at or below it are denied (0: none).
	RevokedVersion uint64 `json:"revoked_version"`
}

// LogEntries are the raw records [Start, Start+len(Entries)).
type LogEntries struct {
	Start   uint64   `json:"start"`
	Entries [][]byte `json:"entries"`
}

// Proof is a Merkle proof (inclusion or consistency) as a list of hashes.
type Proof struct {
	Hashes [][]byte `json:"hashes"`
}

// KubeJoin is the kubeadm join material of an admitted node (keyd/kube):
// a bootstrap token that lives minutes and authenticates only the join,
// the cluster CA's pin, and for control-plane joiners the key of the
// kubeadm-certs Secret. Proposed field: AdmitResponse.Kube *KubeJoin
// `json:"kube,omitempty"` (absent when keyd issues no join material).
type KubeJoin struct {
	// APIServerEndpoint is the host:port kubeadm's discovery dials.
	APIServerEndpoint string `json:"api_server_endpoint"`
	// Token is "[a-z0-9]{6}.[a-z0-9]{16}" (kubeadm's bootstrap token).
	Token string `json:"token"`
	// CACertHashes are "sha256:<hex of the CA's SubjectPublicKeyInfo>".
	CACertHashes []string `json:"ca_cert_hashes"`
	// CertificateKey is the hex AES-256 key of kubeadm-certs; control-plane
	// joiners only.
	CertificateKey string `json:"certificate_key,omitempty"`
	// Expires is when the token stops working (and is deleted).
	Expires time.Time `json:"expires"`
}
