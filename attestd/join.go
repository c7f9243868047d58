package attestd

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/keyd/api"
)

// ErrDenied is keyd's final denial: a keyd whose evidence verified judged
// this node and refused it. Retrying cannot change that verdict.
var ErrDenied = errors.New("denied by keyd")

// ErrDeadline is returned when no keyd admitted the node in time.
var ErrDeadline = errors.New("no keyd admitted this node before the deadline")

// fetchManifest gets keyd's manifest bundle on a session where neither side
// attests: no Attester (so no evidence can be sent, whatever the peer
// asks), no Verifiers (keyd is not judged yet). The bundle is trusted only
// once verifyManifest accepted it.
func fetchManifest(ctx context.Context, addr, cluster string, claims attest.Claims, timeout time.Duration) ([]byte, error) {
	claims.Profile = "manifest-fetch"
	c, err := api.NewClient(addr, &atls.Config{ClusterID: cluster, Claims: claims, AllowUnattestedPeer: true,
		HandshakeTimeout: timeout})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Manifest(ctx)
}

// pinnedManifest is what the image pins to judge a manifest: the signing
// key and, when pinned, the Rekor log's key whose inclusion proof the
// bundle must carry (ARCHITECTURE §6: verified offline).
type pinnedManifest struct {
	key        crypto.PublicKey
	rekor      crypto.PublicKey // nil: no log key pinned
	allowNoLog bool
}

// verifyManifest checks the bundle against the pinned key and, when a log
// key is pinned, its Rekor proof; a missing log proof is accepted only
// when the image's configuration says so (test images).
func verifyManifest(b []byte, p *pinnedManifest) (*manifest.Result, error) {
	o := manifest.Options{Keys: []crypto.PublicKey{p.key}, AllowNoLogProof: p.allowNoLog}
	if p.rekor != nil {
		o.Log = &manifest.RekorVerifier{LogKey: p.rekor, ManifestKeys: []crypto.PublicKey{p.key}}
	}
	r, err := manifest.Verify(b, o)
	if err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	return r, nil
}

// joinConfig is the node's side of the admission session: it attests with
// the machine's attester, verifies keyd with the pinned roots against the
// manifest's keyd reference of the profile keyd claims, and accepts only a
// peer claiming the keyd role. The cluster needs no check here: every
// binding commits to it, so evidence made for another cluster fails.
// verified is set once keyd's evidence verified, so a denial can be told
// apart from an unverified peer's word.
func joinConfig(cluster string, claims attest.Claims, mach *Machine, verifiers map[attest.Platform]attest.Verifier,
	m *manifest.Manifest, timeout time.Duration, verified *atomic.Bool) *atls.Config {
	vs := make(map[attest.Platform]attest.Verifier, len(verifiers))
	for p, v := range verifiers {
		vs[p] = recordingVerifier{Verifier: v, ok: verified}
	}
	return &atls.Config{
		ClusterID: cluster, Claims: claims, Attester: mach.Attester, Verifiers: vs,
		Reference: func(_ context.Context, peer attest.Claims) (*attest.Reference, error) {
			if peer.Role != attest.RoleKeyd {
				return nil, attest.Denyf(attest.ClassPolicy, "peer claims role %q, want keyd", peer.Role)
			}
			return keydReference(m, peer.Profile)
		},
		AcceptPeer: func(peer attest.Claims) error {
			if peer.Role != attest.RoleKeyd {
				return fmt.Errorf("peer %q claims role %q, want keyd", peer.NodeID, peer.Role)
			}
			return nil
		},
		HandshakeTimeout: timeout,
	}
}

// recordingVerifier notes a successful verification of keyd.
type recordingVerifier struct {
	attest.Verifier
	ok *atomic.Bool
}

func (r recordingVerifier) Verify(ctx context.Context, ev *attest.Evidence, in attest.Input) (*attest.Verified, error) {
	v, err := r.Verifier.Verify(ctx, ev, in)
	if err == nil {
		r.ok.Store(true)
	}
	return v, err
}

// admit runs one admission at addr. A denial is final (ErrDenied) only if
// keyd had proved itself first: a peer that denies before its evidence
// verified is just a wrong address.
func admit(ctx context.Context, addr string, cfg *atls.Config, verified *atomic.Bool) (*api.AdmitResponse, error) {
	c, err := api.NewClient(addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	resp, err := c.Admit(ctx)
	if err != nil {
		if errors.Is(err, api.ErrDenied) && verified.Load() {
			return nil, fmt.Errorf("%w %s: %w", ErrDenied, addr, err)
		}
		return nil, err
	}
	return resp, nil
}
