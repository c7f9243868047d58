package keyd

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/auditlog"
	"github.com/palisade-cc/palisade/keyd/store"
)

// errLocked: keyd has no master secret yet.
var errLocked = errors.New("keyd is locked: no master secret")

// errShortCheckpoint: the log's checkpoint does not cover an entry keyd
// just committed (a store that lost a write).
var errShortCheckpoint = errors.New("admission log checkpoint is shorter than a committed entry")

// peerInfo is what the aTLS handshake proved about a peer.
type peerInfo struct {
	remote   string
	claims   attest.Claims
	verified *attest.Verified
}

// admit registers a verified node and returns its keys. The registry write,
// the disk UUID check and the log record are one store transaction: an
// acknowledged admission is in both the registry and the log.
func (k *Keyd) admit(ctx context.Context, p peerInfo) (*api.AdmitResponse, error) {
	if p.verified == nil {
		return nil, attest.Denyf(attest.ClassProtocol, "admit: unattested peer %q", p.claims.NodeID)
	}
	c := p.claims
	if c.Role != attest.RoleNode {
		return nil, attest.Denyf(attest.ClassPolicy, "admit: peer %q has role %q, want %q", c.NodeID, c.Role, attest.RoleNode)
	}
	if p.verified.Profile != c.Profile {
		return nil, attest.Denyf(attest.ClassPolicy, "admit: verified profile %q, claimed %q", p.verified.Profile, c.Profile)
	}
	master := k.secret.get()
	if master == nil {
		return nil, errLocked
	}
	cr := k.cluster.Load()
	var ipv4 netip.Prefix
	if cr != nil {
		ipv4, _ = parseIPv4Range(cr.Config.MeshIPv4)
	}
	secVersion := k.refs.Load().SecurityVersion()
	now := k.now().UTC()
	var rec nodeRecord
	var rev, count uint64
	var peers *api.PeerSet
	err := k.st.Update(ctx, func(tx store.Tx) error {
		rec = nodeRecord{}
		peers = nil
		revoked, err := isRevoked(tx, c.NodeID)
		if err != nil {
			return err
		}
		if revoked {
			return attest.Denyf(attest.ClassRevoked, "node %q is revoked", c.NodeID)
		}
		rv, err := getU64(tx, bucketMeta, keyRevokedVersion)
		if err != nil {
			return err
		}
		if secVersion <= rv {
			return attest.Denyf(attest.ClassRevoked, "image security version %d is revoked (at or below %d)", secVersion, rv)
		}
		var old nodeRecord
		existed, err := getJSON(tx, bucketNodes, []byte(c.NodeID), &old)
		if err != nil {
			return err
		}
		if existed && old.Verified.HardwareID != "" && old.Verified.HardwareID != p.verified.HardwareID {
			// A second machine claiming a registered node ID would get
			// that node's disk keys: deny until the owner re-enrols it.
			return attest.Denyf(attest.ClassPolicy, "node %q was admitted on hardware %s, now presents %s (re-enrol to move it)",
				c.NodeID, old.Verified.HardwareID, p.verified.HardwareID)
		}
		for slot, uuid := range c.DiskUUIDs {
			key := diskKey(c.NodeID, slot)
			had, err := tx.Get(bucketDisks, key)
			switch {
			case errors.Is(err, store.ErrNotFound):
				if err := tx.Put(bucketDisks, key, []byte(uuid)); err != nil {
					return err
				}
			case err != nil:
				return err
			case string(had) != uuid:
				return attest.Denyf(attest.ClassPolicy, "swapped disk: node %q slot %d has LUKS UUID %s, recorded %s (re-enrol to accept it)",
					c.NodeID, slot, uuid, had)
			}
		}
		rec.Claims, rec.Verified, rec.SecurityVersion = c, *p.verified, secVersion
		rec.FirstAdmitted, rec.LastAdmitted = now, now
		if existed {
			rec.FirstAdmitted = old.FirstAdmitted
		}
		if rec.MeshAddress, err = allocMesh6(tx, k.prefix, c.NodeID); err != nil {
			return err
		}
		switch {
		case existed && old.MeshIPv4.IsValid():
			rec.MeshIPv4 = old.MeshIPv4
		case ipv4.IsValid():
			if rec.MeshIPv4, err = allocMesh4(tx, ipv4, c.NodeID); err != nil {
				return err
			}
		}
		if count, err = getU64(tx, bucketPeers, keyPeerCount); err != nil {
			return err
		}
		inSet := existed && !old.Withdrawn
		changed := !inSet || !slices.Equal(old.Claims.WireGuardKey, c.WireGuardKey) ||
			!slices.Equal(old.Claims.Endpoints, c.Endpoints) || old.MeshIPv4 != rec.MeshIPv4
		if !inSet {
			count++
			if err := putU64(tx, bucketPeers, keyPeerCount, count); err != nil {
				return err
			}
		}
		if changed {
			if rev, err = bumpPeers(tx); err != nil {
				return err
			}
		} else if rev, err = getU64(tx, bucketPeers, keyPeersRev); err != nil {
			return err
		}
		d := c.Digest()
		attrs := map[string]string{"hardware_id": p.verified.HardwareID, "mesh_address": rec.MeshAddress.String(),
			"disk_uuids": joinUUIDs(c.DiskUUIDs), "tcb": p.verified.TCB}
		for name, v := range p.verified.Measurements {
			attrs["measurement."+name] = v
		}
		rec.LogIndex, err = k.appendLog(tx, auditlog.Record{
			Type: auditlog.TypeAdmission, Time: now, Node: c.NodeID, Role: string(c.Role), Profile: c.Profile,
			Platform: string(p.verified.Platform), Claims: hexs(d[:]), SecurityVersion: secVersion, Attrs: attrs,
		})
		if err != nil {
			return fmt.Errorf("append admission record: %w", err)
		}
		if err := putJSON(tx, bucketNodes, []byte(c.NodeID), &rec); err != nil {
			return err
		}
		if k.limits.InlinePeers > 0 && count <= uint64(k.limits.InlinePeers) {
			peers, err = readPeers(tx)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	resp := &api.AdmitResponse{NodeID: c.NodeID, MeshAddress: rec.MeshAddress.String(), Peers: peers,
		PeersRevision: rev, LogIndex: rec.LogIndex, DiskKeys: []api.DiskKey{}}
	if rec.MeshIPv4.IsValid() {
		resp.MeshIPv4 = rec.MeshIPv4.String()
	}
	for _, u := range c.DiskUUIDs {
		key, err := DiskKey(master, k.cfg.ClusterID, c.NodeID, u)
		if err != nil {
			return nil, attest.Deny(attest.ClassInternal, err)
		}
		// The owner's recovery key goes with it, so the node formats the
		// second keyslot; both are as secret as each other (never logged).
		rec, err := RecoveryKey(master, k.cfg.ClusterID, c.NodeID, u)
		if err != nil {
			return nil, attest.Deny(attest.ClassInternal, err)
		}
		resp.DiskKeys = append(resp.DiskKeys, api.DiskKey{UUID: u, Key: key, Recovery: rec})
	}
	if resp.Checkpoint, err = k.checkpoints.covering(ctx, k.log, rec.LogIndex+1); err != nil {
		return nil, attest.Deny(attest.ClassInternal, fmt.Errorf("checkpoint after admission: %w", err))
	}
	resp.Kube = k.kubeJoin(ctx, c.NodeID, p.verified.Profile)
	return resp, nil
}

// keyPeerCount counts registered, unrevoked nodes.
var keyPeerCount = []byte("count")

// replicaJoin hands the master secret to a verified keyd-role peer: its
// evidence matched the keyd role's reference values (the aTLS Reference
// callback looks references up by the claimed role).
func (k *Keyd) replicaJoin(ctx context.Context, p peerInfo) (*api.ReplicaJoinResponse, error) {
	if p.verified == nil {
		return nil, attest.Denyf(attest.ClassProtocol, "replica join: unattested peer %q", p.claims.NodeID)
	}
	if p.claims.Role != attest.RoleKeyd {
		return nil, attest.Denyf(attest.ClassPolicy, "replica join: peer %q has role %q, want %q", p.claims.NodeID, p.claims.Role, attest.RoleKeyd)
	}
	if p.verified.Profile != p.claims.Profile {
		return nil, attest.Denyf(attest.ClassPolicy, "replica join: verified profile %q, claimed %q", p.verified.Profile, p.claims.Profile)
	}
	master := k.secret.get()
	if master == nil {
		return nil, errLocked
	}
	var idx uint64
	err := k.st.Update(ctx, func(tx store.Tx) error {
		var err error
		d := p.claims.Digest()
		idx, err = k.appendLog(tx, auditlog.Record{Type: auditlog.TypeReplicaJoin, Node: p.claims.NodeID,
			Role: string(p.claims.Role), Profile: p.claims.Profile, Platform: string(p.verified.Platform),
			Claims: hexs(d[:]), SecurityVersion: k.refs.Load().SecurityVersion(),
			Attrs: map[string]string{"hardware_id": p.verified.HardwareID}})
		return err
	})
	if err != nil {
		return nil, err
	}
	return &api.ReplicaJoinResponse{ClusterID: k.cfg.ClusterID, MasterSecret: master, LogIndex: idx}, nil
}

// errConflict marks owner requests that are well-formed but not acceptable
// in keyd's state (a second init, a wrong recovery secret).
var errConflict = errors.New("conflict")

// initCluster accepts the master secret once, when keyd has none and the
// store has no commitment.
func (k *Keyd) initCluster(ctx context.Context, req *api.InitRequest) error {
	if req.ClusterID != k.cfg.ClusterID {
		return fmt.Errorf("init.cluster_id %q: this keyd serves %q", req.ClusterID, k.cfg.ClusterID)
	}
	if len(req.MasterSecret) != api.MasterSecretSize {
		return fmt.Errorf("init.master_secret: %d bytes, want %d", len(req.MasterSecret), api.MasterSecretSize)
	}
	if len(req.OwnerKey) != ed25519.PublicKeySize {
		return fmt.Errorf("init.owner_key: %d bytes, want %d (Ed25519)", len(req.OwnerKey), ed25519.PublicKeySize)
	}
	if _, err := parseIPv4Range(req.Config.MeshIPv4); err != nil {
		return fmt.Errorf("init.config.%w", err)
	}
	k.ownerMu.Lock()
	defer k.ownerMu.Unlock()
	if k.secret.get() != nil {
		return fmt.Errorf("%w: keyd already holds a master secret", errConflict)
	}
	com := commitment(k.cfg.ClusterID, req.MasterSecret)
	cr := clusterRecord{ClusterID: req.ClusterID, Config: req.Config, OwnerKey: req.OwnerKey, Created: k.now().UTC()}
	var sealed []byte
	if k.sealKey != nil {
		var err error
		if sealed, err = seal(k.sealKey, k.cfg.ClusterID, req.MasterSecret); err != nil {
			return err
		}
	}
	err := k.st.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.Get(bucketMeta, keyCommitment); err == nil {
			return fmt.Errorf("%w: the cluster is already initialised (use recover)", errConflict)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err := tx.Put(bucketMeta, keyCommitment, com); err != nil {
			return err
		}
		if err := putJSON(tx, bucketMeta, keyCluster, &cr); err != nil {
			return err
		}
		if sealed != nil {
			if err := tx.Put(bucketMeta, keySealed, sealed); err != nil {
				return err
			}
		}
		_, err := k.appendLog(tx, auditlog.Record{Type: auditlog.TypeInit, Time: cr.Created, Node: k.cfg.NodeID,
			Attrs: map[string]string{"commitment": hexs(com), "mesh_ipv4": req.Config.MeshIPv4, "owner_key": hexs(req.OwnerKey)}})
		return err
	})
	if err != nil {
		return err
	}
	k.cluster.Store(&cr)
	return k.secret.set(req.MasterSecret)
}

// recoverSecret accepts the master secret whose commitment keyd stored.
func (k *Keyd) recoverSecret(ctx context.Context, req *api.RecoverRequest) error {
	if len(req.MasterSecret) != api.MasterSecretSize {
		return fmt.Errorf("recover.master_secret: %d bytes, want %d", len(req.MasterSecret), api.MasterSecretSize)
	}
	return k.installSecret(ctx, req.MasterSecret, eventRecover)
}

// installSecret loads a master secret that must match the stored
// commitment (recover, replica join on the joining side).
func (k *Keyd) installSecret(ctx context.Context, master []byte, ev string) error {
	k.ownerMu.Lock()
	defer k.ownerMu.Unlock()
	var com []byte
	var cr clusterRecord
	var found bool
	err := k.st.View(ctx, func(tx store.Tx) error {
		var err error
		if com, err = tx.Get(bucketMeta, keyCommitment); err != nil {
			return err
		}
		found, err = getJSON(tx, bucketMeta, keyCluster, &cr)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("%w: the cluster was never initialised (use init)", errConflict)
	}
	if err != nil {
		return err
	}
	if !equalCT(commitment(k.cfg.ClusterID, master), com) {
		return fmt.Errorf("%w: master secret does not match the stored commitment", errConflict)
	}
	if k.secret.get() != nil {
		return nil // already unlocked with this very secret
	}
	err = k.st.Update(ctx, func(tx store.Tx) error {
		if k.sealKey != nil {
			sealed, err := seal(k.sealKey, k.cfg.ClusterID, master)
			if err != nil {
				return err
			}
			if err := tx.Put(bucketMeta, keySealed, sealed); err != nil {
				return err
			}
		}
		typ := auditlog.TypeInit
		if ev == eventReplicaJoined {
			typ = auditlog.TypeReplicaJoin
		}
		_, err := k.appendLog(tx, auditlog.Record{Type: typ, Node: k.cfg.NodeID, Role: string(attest.RoleKeyd),
			Attrs: event(ev, "commitment", hexs(com))})
		return err
	})
	if err != nil {
		return err
	}
	if found {
		k.cluster.Store(&cr)
	}
	return k.secret.set(master)
}

// ownerRequest verifies and applies an owner-signed revocation or
// re-enrolment. The nonce is recorded in the same transaction, so a replay
// fails even across replicas.
func (k *Keyd) ownerRequest(ctx context.Context, req *api.OwnerRequest, allowed ...string) error {
	if !slices.Contains(allowed, req.Action) {
		return fmt.Errorf("owner request.action %q: not accepted here (want one of %q)", req.Action, allowed)
	}
	cr := k.cluster.Load()
	if cr == nil {
		return fmt.Errorf("%w: no owner key yet (init first)", errConflict)
	}
	now := k.now()
	if err := req.Verify(ownerKey(cr), k.cfg.ClusterID, now); err != nil {
		return err
	}
	var changedPeers bool
	var revokedIDs []string
	err := k.st.Update(ctx, func(tx store.Tx) error {
		changedPeers, revokedIDs = false, nil
		if _, err := tx.Get(bucketNonces, req.Nonce); err == nil {
			return fmt.Errorf("%w: owner request.nonce %x already used (replay)", errConflict, req.Nonce)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if err := tx.Put(bucketNonces, req.Nonce, binary.BigEndian.AppendUint64(nil, uint64(req.Timestamp))); err != nil {
			return err
		}
		rec := auditlog.Record{Type: auditlog.TypeRevocation, Time: now.UTC(), Node: req.NodeID, SecurityVersion: req.SecurityVersion}
		switch req.Action {
		case api.ActionRevokeNode:
			rec.Attrs = event(eventRevokeNode, "nonce", hexs(req.Nonce))
			revoked, err := isRevoked(tx, req.NodeID)
			if err != nil {
				return err
			}
			if !revoked {
				var n nodeRecord
				found, err := getJSON(tx, bucketNodes, []byte(req.NodeID), &n)
				if err != nil {
					return err
				}
				if found && !n.Withdrawn {
					changedPeers = true
					cnt, err := getU64(tx, bucketPeers, keyPeerCount)
					if err != nil {
						return err
					}
					if cnt > 0 {
						if err := putU64(tx, bucketPeers, keyPeerCount, cnt-1); err != nil {
							return err
						}
					}
				}
			}
		case api.ActionRevokeVersion:
			rec.Attrs = event(eventRevokeVersion, "nonce", hexs(req.Nonce))
			rv, err := getU64(tx, bucketMeta, keyRevokedVersion)
			if err != nil {
				return err
			}
			if req.SecurityVersion > rv {
				if err := putU64(tx, bucketMeta, keyRevokedVersion, req.SecurityVersion); err != nil {
					return err
				}
			}
			ids, err := k.revokeNodesAtOrBelow(tx, req.SecurityVersion)
			if err != nil {
				return err
			}
			revokedIDs, changedPeers = ids, len(ids) > 0
		case api.ActionReenrolDisks:
			rec.Attrs = event(eventReenrol, "nonce", hexs(req.Nonce))
			if err := reenrol(tx, req.NodeID); err != nil {
				return err
			}
		}
		idx, err := k.appendLog(tx, rec)
		if err != nil {
			return err
		}
		if req.Action == api.ActionRevokeNode {
			if err := putJSON(tx, bucketRevoked, []byte(req.NodeID), &revocationRecord{Time: now.UTC(), LogIndex: idx}); err != nil {
				return err
			}
		}
		if changedPeers {
			_, err = bumpPeers(tx)
		}
		return err
	})
	if err != nil {
		return err
	}
	k.logger.Info("owner request applied", "action", req.Action, "node", req.NodeID, "security_version", req.SecurityVersion)
	if req.Action == api.ActionRevokeNode {
		revokedIDs = []string{req.NodeID}
	}
	k.kubeRevoke(ctx, revokedIDs)
	return nil
}

// revokeNodesAtOrBelow removes from the peer set every node admitted with
// an image security version at or below v, and returns their IDs. Their registry entries stay for
// the audit trail; their next admission runs the current manifest.
func (k *Keyd) revokeNodesAtOrBelow(tx store.Tx, v uint64) ([]string, error) {
	var ids []string
	err := tx.Scan(bucketNodes, nil, func(key, val []byte) error {
		var n nodeRecord
		if err := jsonUnmarshal(val, &n); err != nil {
			return fmt.Errorf("decode node %q: %w", key, err)
		}
		if n.SecurityVersion <= v && !n.Withdrawn {
			ids = append(ids, string(key))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Their entries stay in the registry, withdrawn from the peer set;
	// a re-admission under a newer image brings them back.
	for _, id := range ids {
		var n nodeRecord
		if _, err := getJSON(tx, bucketNodes, []byte(id), &n); err != nil {
			return nil, err
		}
		n.Withdrawn = true
		if err := putJSON(tx, bucketNodes, []byte(id), &n); err != nil {
			return nil, err
		}
	}
	if len(ids) > 0 {
		cnt, err := getU64(tx, bucketPeers, keyPeerCount)
		if err != nil {
			return nil, err
		}
		n := uint64(len(ids))
		if n > cnt {
			n = cnt
		}
		if err := putU64(tx, bucketPeers, keyPeerCount, cnt-n); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// reenrol forgets a node's recorded disks and hardware binding, so its next
// admission records them anew; a revoked node stays revoked.
func reenrol(tx store.Tx, nodeID string) error {
	var keys [][]byte
	err := tx.Scan(bucketDisks, append([]byte(nodeID), 0), func(k, _ []byte) error {
		keys = append(keys, slices.Clone(k))
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := tx.Delete(bucketDisks, k); err != nil {
			return err
		}
	}
	var n nodeRecord
	found, err := getJSON(tx, bucketNodes, []byte(nodeID), &n)
	if err != nil || !found {
		return err
	}
	n.Verified.HardwareID = ""
	return putJSON(tx, bucketNodes, []byte(nodeID), &n)
}
