package keyd

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/store"
)

// Buckets of keyd's state (docs/keyd.md §State).
const (
	bucketNodes   = "nodes"   // node ID → nodeRecord (JSON)
	bucketDisks   = "disks"   // node ID ‖ 0x00 ‖ slot (u16) → LUKS UUID
	bucketMesh6   = "mesh6"   // IPv6 address (16 bytes) → node ID
	bucketMesh4   = "mesh4"   // IPv4 address (4 bytes) → node ID
	bucketRevoked = "revoked" // node ID → revocationRecord (JSON)
	bucketNonces  = "nonces"  // owner request nonce → Unix seconds (u64)
	bucketMeta    = "meta"    // keys below
	bucketPeers   = "peers"   // "rev" → u64; watched by long polls
)

// Keys of bucketMeta and bucketPeers.
var (
	keyCommitment     = []byte("master-commitment")
	keySealed         = []byte("master-sealed")
	keyCluster        = []byte("cluster")
	keyMaxSecVersion  = []byte("max-security-version")
	keyRevokedVersion = []byte("revoked-security-version")
	keyNext4          = []byte("next-ipv4")
	keyPeersRev       = []byte("rev")
)

// nodeRecord is a registry entry.
type nodeRecord struct {
	Claims          attest.Claims   `json:"claims"`
	Verified        attest.Verified `json:"verified"`
	SecurityVersion uint64          `json:"security_version"`
	MeshAddress     netip.Addr      `json:"mesh_address"`
	MeshIPv4        netip.Addr      `json:"mesh_ipv4,omitzero"`
	FirstAdmitted   time.Time       `json:"first_admitted"`
	LastAdmitted    time.Time       `json:"last_admitted"`
	LogIndex        uint64          `json:"log_index"`
	// Withdrawn: out of the peer set because its image's security
	// version was revoked; a new admission clears it.
	Withdrawn bool `json:"withdrawn,omitempty"`
}

// clusterRecord is what init stored besides the commitment.
type clusterRecord struct {
	ClusterID string            `json:"cluster_id"`
	Config    api.ClusterConfig `json:"config"`
	OwnerKey  []byte            `json:"owner_key"`
	Created   time.Time         `json:"created"`
}

type revocationRecord struct {
	Time     time.Time `json:"time"`
	LogIndex uint64    `json:"log_index"`
}

func getJSON(tx store.Tx, bucket string, key []byte, v any) (bool, error) {
	b, err := tx.Get(bucket, key)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s/%s: %w", bucket, key, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("decode %s/%s: %w", bucket, key, err)
	}
	return true, nil
}

func putJSON(tx store.Tx, bucket string, key []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Put(bucket, key, b)
}

func getU64(tx store.Tx, bucket string, key []byte) (uint64, error) {
	b, err := tx.Get(bucket, key)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s/%s: %w", bucket, key, err)
	}
	if len(b) != 8 {
		return 0, fmt.Errorf("read %s/%s: %d bytes, want 8", bucket, key, len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}

func putU64(tx store.Tx, bucket string, key []byte, v uint64) error {
	return tx.Put(bucket, key, binary.BigEndian.AppendUint64(nil, v))
}

// bumpPeers increments the peer set revision; the write wakes long polls
// through Store.Watch(bucketPeers), across replicas for shared stores.
func bumpPeers(tx store.Tx) (uint64, error) {
	rev, err := getU64(tx, bucketPeers, keyPeersRev)
	if err != nil {
		return 0, err
	}
	rev++
	return rev, putU64(tx, bucketPeers, keyPeersRev, rev)
}

func diskKey(nodeID string, slot int) []byte {
	k := append([]byte(nodeID), 0)
	return binary.BigEndian.AppendUint16(k, uint16(slot))
}

func isRevoked(tx store.Tx, nodeID string) (bool, error) {
	_, err := tx.Get(bucketRevoked, []byte(nodeID))
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read revocation of %q: %w", nodeID, err)
	}
	return true, nil
}

// allocMesh6 returns the node's address: its existing one, or the first
// free candidate.
func allocMesh6(tx store.Tx, prefix netip.Prefix, nodeID string) (netip.Addr, error) {
	for attempt := uint32(0); attempt < 64; attempt++ {
		a := meshCandidate(prefix, nodeID, attempt)
		k := a.AsSlice()
		owner, err := tx.Get(bucketMesh6, k)
		if errors.Is(err, store.ErrNotFound) {
			return a, tx.Put(bucketMesh6, k, []byte(nodeID))
		}
		if err != nil {
			return netip.Addr{}, err
		}
		if string(owner) == nodeID {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("mesh address of %q: 64 candidates all taken", nodeID)
}

// allocMesh4 hands out IPv4 host addresses of p in order, skipping taken
// ones; addresses are never reused (a revoked node keeps its address out of
// circulation, so no peer mistakes a newcomer for it).
func allocMesh4(tx store.Tx, p netip.Prefix, nodeID string) (netip.Addr, error) {
	next, err := getU64(tx, bucketMeta, keyNext4)
	if err != nil {
		return netip.Addr{}, err
	}
	if next == 0 {
		next = 1
	}
	for ; ; next++ {
		a, ok := ipv4At(p, uint32(next))
		if !ok || next > 1<<32 {
			return netip.Addr{}, fmt.Errorf("mesh_ipv4 %s: exhausted", p)
		}
		_, err := tx.Get(bucketMesh4, a.AsSlice())
		if errors.Is(err, store.ErrNotFound) {
			if err := tx.Put(bucketMesh4, a.AsSlice(), []byte(nodeID)); err != nil {
				return netip.Addr{}, err
			}
			return a, putU64(tx, bucketMeta, keyNext4, next+1)
		}
		if err != nil {
			return netip.Addr{}, err
		}
	}
}

func (n *nodeRecord) apiNode(revoked bool) api.Node {
	out := api.Node{
		NodeID: n.Claims.NodeID, Role: string(n.Claims.Role), Profile: n.Claims.Profile,
		Platform: string(n.Verified.Platform), HardwareID: n.Verified.HardwareID, TCB: n.Verified.TCB,
		Measurements: n.Verified.Measurements, SecurityVersion: n.SecurityVersion,
		WireGuardKey: n.Claims.WireGuardKey, Endpoints: n.Claims.Endpoints, DiskUUIDs: n.Claims.DiskUUIDs,
		MeshAddress: n.MeshAddress.String(), FirstAdmitted: n.FirstAdmitted, LastAdmitted: n.LastAdmitted,
		LogIndex: n.LogIndex, Revoked: revoked || n.Withdrawn,
	}
	if n.MeshIPv4.IsValid() {
		out.MeshIPv4 = n.MeshIPv4.String()
	}
	return out
}

func (n *nodeRecord) peer() api.Peer {
	p := api.Peer{NodeID: n.Claims.NodeID, WireGuardKey: n.Claims.WireGuardKey,
		MeshAddress: n.MeshAddress.String(), Endpoints: n.Claims.Endpoints}
	if n.MeshIPv4.IsValid() {
		p.MeshIPv4 = n.MeshIPv4.String()
	}
	return p
}

// readPeers reads the peer set: every registered, unrevoked node, in node
// ID order.
func readPeers(tx store.Tx) (*api.PeerSet, error) {
	rev, err := getU64(tx, bucketPeers, keyPeersRev)
	if err != nil {
		return nil, err
	}
	ps := &api.PeerSet{Revision: rev, Peers: []api.Peer{}}
	err = tx.Scan(bucketNodes, nil, func(k, v []byte) error {
		var n nodeRecord
		if err := json.Unmarshal(v, &n); err != nil {
			return fmt.Errorf("decode node %q: %w", k, err)
		}
		if n.Withdrawn {
			return nil
		}
		revoked, err := isRevoked(tx, string(k))
		if err != nil || revoked {
			return err
		}
		ps.Peers = append(ps.Peers, n.peer())
		return nil
	})
	return ps, err
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
