// Package keyd is Palisade's attested key broker: it admits nodes whose
// aTLS evidence matches the manifest, hands them disk keys, mesh addresses
// and the peer set, keeps the node registry and revocations, and writes
// every decision to the admission log.
//
// It is not a verifier of evidence (internal/attest/… are) nor a store
// (keyd/store/…); other components reach it only through keyd/api.
package keyd

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/auditlog"
	"github.com/palisade-cc/palisade/keyd/store"
)

// Options are keyd's dependencies; Run builds the production ones from a
// Config, tests hand in their own.
type Options struct {
	Store store.Store
	Log   Log
	// Attester is keyd's own attester (its peers verify it).
	Attester attest.Attester
	// Verifiers judge peers' evidence by platform, pinned to configured roots.
	Verifiers  map[attest.Platform]attest.Verifier
	References References
	// SealKey (32 bytes) seals the master secret into the store; nil
	// keeps it in memory only.
	SealKey []byte
	// Logger receives the precise denial reasons (nil: discard).
	Logger *slog.Logger
	// Registerer receives the metrics (nil: a private registry).
	Registerer prometheus.Registerer
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Kube issues kubeadm join material to admitted nodes (nil: none).
	Kube KubeIssuer
}

// Keyd is one keyd replica.
type Keyd struct {
	kube   KubeIssuer
	cfg    Config
	limits Limits
	st     store.Store
	log    Log
	atls   *atls.Config
	logger *slog.Logger
	m      *metrics
	now    func() time.Time

	refs    atomic.Pointer[refsHolder]
	secret  secret
	sealKey []byte
	prefix  netip.Prefix
	cluster atomic.Pointer[clusterRecord]
	ownerMu sync.Mutex // serialises init and recover

	rl         *rateLimiter
	admitSlots chan struct{}

	peersMu    sync.Mutex
	peersCache *api.PeerSet

	checkpoints checkpoints

	notifyMu sync.Mutex
	notify   chan struct{} // closed and replaced when the peer set changes

	denyMu  sync.Mutex
	denials map[attest.Class]uint64
}

type refsHolder struct{ References }

// New checks cfg and opts, loads keyd's state (cluster, sealed secret) and
// accepts opts.References unless that would roll the security version back.
func New(ctx context.Context, cfg *Config, opts Options) (*Keyd, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Store == nil || opts.Log == nil || opts.References == nil {
		return nil, errors.New("keyd: Options.Store, Log and References are required")
	}
	if opts.Attester == nil {
		return nil, errors.New("keyd: Options.Attester is required: keyd always attests itself")
	}
	if len(opts.Verifiers) == 0 {
		return nil, errors.New("keyd: Options.Verifiers: none, keyd could admit nobody")
	}
	if opts.SealKey != nil && len(opts.SealKey) != 32 {
		return nil, fmt.Errorf("keyd: Options.SealKey: %d bytes, want 32", len(opts.SealKey))
	}
	k := &Keyd{
		cfg: *cfg, limits: cfg.Limits.withDefaults(), st: opts.Store, log: opts.Log,
		logger: opts.Logger, now: opts.Now, sealKey: opts.SealKey, kube: opts.Kube,
		prefix: MeshPrefix(cfg.ClusterID), notify: make(chan struct{}), denials: map[attest.Class]uint64{},
	}
	if k.logger == nil {
		k.logger = slog.New(slog.DiscardHandler)
	}
	if k.now == nil {
		k.now = time.Now
	}
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	var err error
	if k.m, err = newMetrics(reg); err != nil {
		return nil, fmt.Errorf("keyd metrics: %w", err)
	}
	k.rl = newRateLimiter(k.limits.RatePerSource, k.limits.BurstPerSource, k.now)
	k.admitSlots = make(chan struct{}, k.limits.MaxAdmissions)

	slots := make(chan struct{}, k.limits.MaxVerifications)
	verifiers := make(map[attest.Platform]attest.Verifier, len(opts.Verifiers))
	for p, v := range opts.Verifiers {
		if v.Platform() != p {
			return nil, fmt.Errorf("keyd: Options.Verifiers[%q] is a verifier for %q", p, v.Platform())
		}
		verifiers[p] = &limitedVerifier{Verifier: v, slots: slots, observe: k.observeVerification}
	}
	k.atls = &atls.Config{
		ClusterID:           cfg.ClusterID,
		Claims:              attest.Claims{NodeID: cfg.NodeID, Role: attest.RoleKeyd, Profile: cfg.Profile},
		Attester:            opts.Attester,
		Verifiers:           verifiers,
		Reference:           k.reference,
		AllowUnattestedPeer: true, // the owner's verifier CLI; see api.UnattestedAllowed
		HandshakeTimeout:    time.Duration(k.limits.HandshakeTimeout),
		MaxMessageSize:      k.limits.MaxEvidenceSize,
		Logger:              k.logger,
		Now:                 opts.Now,
	}
	if err := k.atls.Validate(); err != nil {
		return nil, fmt.Errorf("keyd aTLS config: %w", err)
	}
	if err := k.loadState(ctx); err != nil {
		return nil, err
	}
	if err := k.AcceptReferences(ctx, opts.References); err != nil {
		return nil, err
	}
	return k, nil
}

// ErrRollback is returned for a manifest whose security version is below
// the highest keyd ever accepted.
var ErrRollback = errors.New("manifest rollback")

// AcceptReferences installs refs unless its security version is lower than
// the highest accepted so far (persisted in the store, so neither a restart
// nor another replica can roll it back). A new highest version is logged.
func (k *Keyd) AcceptReferences(ctx context.Context, refs References) error {
	v := refs.SecurityVersion()
	err := k.st.Update(ctx, func(tx store.Tx) error {
		max, err := getU64(tx, bucketMeta, keyMaxSecVersion)
		if err != nil {
			return err
		}
		if v < max {
			return fmt.Errorf("%w: security version %d is below the highest accepted %d", ErrRollback, v, max)
		}
		if v == max {
			return nil
		}
		if err := putU64(tx, bucketMeta, keyMaxSecVersion, v); err != nil {
			return err
		}
		_, err = k.appendLog(tx, auditlog.Record{Type: auditlog.TypeRevocation, SecurityVersion: v,
			Attrs: event(eventManifest, "below", countStr(v))})
		return err
	})
	if err != nil {
		k.logger.Error("manifest refused", "security_version", v, "err", err)
		return err
	}
	k.refs.Store(&refsHolder{refs})
	k.logger.Info("manifest accepted", "security_version", v)
	return nil
}

// loadState reads the cluster record and, with a seal key, unseals the
// master secret and checks it against its commitment.
func (k *Keyd) loadState(ctx context.Context) error {
	var cr clusterRecord
	var found bool
	var sealed, com []byte
	err := k.st.View(ctx, func(tx store.Tx) error {
		var err error
		if found, err = getJSON(tx, bucketMeta, keyCluster, &cr); err != nil {
			return err
		}
		if sealed, err = tx.Get(bucketMeta, keySealed); errors.Is(err, store.ErrNotFound) {
			sealed, err = nil, nil
		}
		if err != nil {
			return err
		}
		if com, err = tx.Get(bucketMeta, keyCommitment); errors.Is(err, store.ErrNotFound) {
			com, err = nil, nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("keyd: load state: %w", err)
	}
	if !found {
		return nil
	}
	if cr.ClusterID != k.cfg.ClusterID {
		return fmt.Errorf("keyd: state belongs to cluster %q, config.cluster_id is %q", cr.ClusterID, k.cfg.ClusterID)
	}
	k.cluster.Store(&cr)
	if k.sealKey == nil || sealed == nil {
		return nil
	}
	m, err := unseal(k.sealKey, k.cfg.ClusterID, sealed)
	if err != nil {
		return fmt.Errorf("keyd: %w", err)
	}
	if !equalCT(commitment(k.cfg.ClusterID, m), com) {
		return errors.New("keyd: sealed master secret does not match the stored commitment")
	}
	return k.secret.set(m)
}

// Unlocked reports whether keyd holds the master secret.
func (k *Keyd) Unlocked() bool { return k.secret.get() != nil }

// ATLSConfig is the server side of keyd's aTLS sessions.
func (k *Keyd) ATLSConfig() *atls.Config { return k.atls }

// reference is the aTLS Reference callback: it runs on the peer's hello,
// before any evidence is verified, so revoked nodes and revoked images cost
// no verification. The admission transaction checks both again.
func (k *Keyd) reference(ctx context.Context, peer attest.Claims) (*attest.Reference, error) {
	refs := k.refs.Load()
	ref, err := refs.Lookup(peer.Role, peer.Profile)
	if err != nil {
		return nil, attest.Deny(attest.ClassPolicy, err)
	}
	var revoked bool
	var revokedVersion uint64
	err = k.st.View(ctx, func(tx store.Tx) error {
		var err error
		if peer.Role == attest.RoleNode {
			if revoked, err = isRevoked(tx, peer.NodeID); err != nil {
				return err
			}
		}
		revokedVersion, err = getU64(tx, bucketMeta, keyRevokedVersion)
		return err
	})
	if err != nil {
		return nil, attest.Deny(attest.ClassInternal, err)
	}
	if revoked {
		return nil, attest.Denyf(attest.ClassRevoked, "node %q is revoked", peer.NodeID)
	}
	if v := refs.SecurityVersion(); v <= revokedVersion {
		return nil, attest.Denyf(attest.ClassRevoked, "image security version %d is revoked (at or below %d)", v, revokedVersion)
	}
	return ref, nil
}

func (k *Keyd) observeVerification(p attest.Platform, d time.Duration, _ error) {
	k.m.verification.WithLabelValues(string(p)).Observe(d.Seconds())
}

// denied counts and logs a denial; the peer learns nothing of it.
func (k *Keyd) denied(remote, nodeID string, err error) {
	c := attest.ClassOf(err)
	k.m.admissions.WithLabelValues(resultDenied, string(c)).Inc()
	k.logger.Warn("denied", "remote", remote, "node", nodeID, "class", c, "reason", err.Error())
	k.denyMu.Lock()
	k.denials[c]++
	k.denyMu.Unlock()
}

// flushDenials appends a summary of the denials since the last one to the
// log: one record per interval, however many peers were denied, so a flood
// of bad handshakes cannot grow the log without bound.
func (k *Keyd) flushDenials(ctx context.Context) error {
	k.denyMu.Lock()
	d := k.denials
	k.denials = map[attest.Class]uint64{}
	k.denyMu.Unlock()
	if len(d) == 0 {
		return nil
	}
	err := k.st.Update(ctx, func(tx store.Tx) error {
		attrs := event(eventDenialSummary)
		for c, n := range d {
			attrs["class."+string(c)] = countStr(n)
		}
		_, err := k.appendLog(tx, auditlog.Record{Type: auditlog.TypeDenial, Reason: "summary", Attrs: attrs})
		return err
	})
	if err != nil { // keep the counts for the next try
		k.denyMu.Lock()
		for c, n := range d {
			k.denials[c] += n
		}
		k.denyMu.Unlock()
	}
	return err
}

// peersChanged returns a channel closed at the next peer set change.
func (k *Keyd) peersChanged() <-chan struct{} {
	k.notifyMu.Lock()
	defer k.notifyMu.Unlock()
	return k.notify
}

func (k *Keyd) broadcastPeers() {
	k.notifyMu.Lock()
	close(k.notify)
	k.notify = make(chan struct{})
	k.notifyMu.Unlock()
}

// watchPeers turns store notifications (this replica's writes and, with a
// shared store, other replicas') into broadcasts to long polls.
func (k *Keyd) watchPeers(ctx context.Context) {
	ch := k.st.Watch(ctx, bucketPeers)
	for range ch {
		k.broadcastPeers()
	}
}

// peerSet returns the current peer set, rebuilt at most once per revision.
func (k *Keyd) peerSet(ctx context.Context) (*api.PeerSet, error) {
	k.peersMu.Lock()
	defer k.peersMu.Unlock()
	var ps *api.PeerSet
	err := k.st.View(ctx, func(tx store.Tx) error {
		rev, err := getU64(tx, bucketPeers, keyPeersRev)
		if err != nil {
			return err
		}
		if k.peersCache != nil && k.peersCache.Revision == rev {
			ps = k.peersCache
			return nil
		}
		ps, err = readPeers(tx)
		return err
	})
	if err != nil {
		return nil, err
	}
	k.peersCache = ps
	k.m.peers.Set(float64(len(ps.Peers)))
	return ps, nil
}

func ownerKey(cr *clusterRecord) ed25519.PublicKey { return ed25519.PublicKey(cr.OwnerKey) }
