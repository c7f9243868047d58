package keyd

import (
	"context"
	"errors"
	"testing"
	"time"

	spb "github.com/google/go-sev-guest/proto/sevsnp"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/keyd/auditlog"
	"github.com/palisade-cc/palisade/keyd/store"
)

// TestDeny: each subtest starts from a node that TestAdmitSNP shows is
// admitted, changes one thing, and expects a denial with the metric label
// of its class.
func TestDeny(t *testing.T) {
	type tc struct {
		name  string
		class attest.Class
		opts  harnessOpts
		// run makes the one change and tries to admit.
		run func(t *testing.T, h *harness) error
	}
	admitWith := func(report func(*spb.Report)) func(*testing.T, *harness) error {
		return func(t *testing.T, h *harness) error {
			_, err := h.node("node-1", []string{testDiskA}, report).Admit(ctxT(t))
			return err
		}
	}
	admitted := func(t *testing.T, h *harness, id string, disks []string) {
		t.Helper()
		if _, err := h.node(id, disks, nil).Admit(ctxT(t)); err != nil {
			t.Fatalf("valid admission: %v", err)
		}
	}
	for _, c := range []tc{
		{"malformed", attest.ClassMalformed, harnessOpts{}, func(t *testing.T, h *harness) error {
			tr := &snptest.Transport{Chain: h.chain, Certs: []byte("not a certificate table")}
			_, err := h.client(h.clientConfig(nodeClaims("node-1"), &snp.Attester{Transport: tr})).Admit(ctxT(t))
			return err
		}},
		{"chain", attest.ClassChain, harnessOpts{}, admitWith(func(r *spb.Report) { r.ChipId[0] ^= 0xff })},
		{"revoked", attest.ClassRevoked, harnessOpts{}, func(t *testing.T, h *harness) error {
			if err := h.chain.Revoke(h.bundle, h.chain.VCEK.SerialNumber); err != nil {
				t.Fatal(err)
			}
			return admitWith(nil)(t, h)
		}},
		{"collateral", attest.ClassCollateral, harnessOpts{}, func(t *testing.T, h *harness) error {
			now := time.Now()
			if err := h.chain.WriteBundle(h.bundle, snptest.BundleOptions{ThisUpdate: now.Add(-48 * time.Hour), NextUpdate: now.Add(-time.Hour)}); err != nil {
				t.Fatal(err)
			}
			return admitWith(nil)(t, h)
		}},
		{"tcb", attest.ClassTCB, harnessOpts{}, admitWith(func(r *spb.Report) {
			r.LaunchTcb = snp.ComposeTCB("Milan", attest.SNPTCB{BootLoader: 3, SNP: 8, Microcode: 114})
		})},
		{"policy", attest.ClassPolicy, harnessOpts{}, admitWith(func(r *spb.Report) { r.Policy |= 1 << 19 })},
		{"binding", attest.ClassBinding, harnessOpts{}, func(t *testing.T, h *harness) error {
			// Evidence made for another session (another nonce): what a
			// replaying or relaying peer has.
			att := &bindingLiar{Attester: &snp.Attester{Transport: &snptest.Transport{Chain: h.chain}},
				mutate: func(b *attest.Binding) { b.Nonce = make([]byte, attest.NonceSize) }}
			_, err := h.client(h.clientConfig(nodeClaims("node-1"), att)).Admit(ctxT(t))
			return err
		}},
		{"measurement", attest.ClassMeasurement, harnessOpts{}, admitWith(func(r *spb.Report) { r.Measurement[0] ^= 1 })},
		{"protocol-unattested-admit", attest.ClassProtocol, harnessOpts{}, func(t *testing.T, h *harness) error {
			_, err := h.ownerClient().Admit(ctxT(t))
			return err
		}},
		{"protocol-unattested-peers", attest.ClassProtocol, harnessOpts{}, func(t *testing.T, h *harness) error {
			_, err := h.ownerClient().Peers(ctxT(t), 0, time.Millisecond)
			return err
		}},
		{"protocol-unattested-replica-join", attest.ClassProtocol, harnessOpts{}, func(t *testing.T, h *harness) error {
			_, err := h.ownerClient().ReplicaJoin(ctxT(t))
			return err
		}},
		{"internal", attest.ClassInternal, harnessOpts{wrapLog: func(l Log) Log { return &failOnAdmit{Log: l} }}, admitWith(nil)},
		{"revoked-node", attest.ClassRevoked, harnessOpts{}, func(t *testing.T, h *harness) error {
			admitted(t, h, "node-1", []string{testDiskA})
			if err := h.ownerClient().Revoke(ctxT(t), h.ownerRequest(api.ActionRevokeNode, "node-1", 0)); err != nil {
				t.Fatal(err)
			}
			return admitWith(nil)(t, h)
		}},
		{"revoked-image-version", attest.ClassRevoked, harnessOpts{}, func(t *testing.T, h *harness) error {
			admitted(t, h, "node-1", []string{testDiskA})
			if err := h.ownerClient().Revoke(ctxT(t), h.ownerRequest(api.ActionRevokeVersion, "", 1)); err != nil {
				t.Fatal(err)
			}
			return admitWith(nil)(t, h)
		}},
		{"swapped-disk", attest.ClassPolicy, harnessOpts{}, func(t *testing.T, h *harness) error {
			admitted(t, h, "node-1", []string{testDiskA})
			_, err := h.node("node-1", []string{testDiskSwapped}, nil).Admit(ctxT(t))
			return err
		}},
		{"keyd-role-admit", attest.ClassPolicy, harnessOpts{}, func(t *testing.T, h *harness) error {
			_, err := h.keydPeer("keyd-1").Admit(ctxT(t))
			return err
		}},
		{"node-role-replica-join", attest.ClassPolicy, harnessOpts{}, func(t *testing.T, h *harness) error {
			_, err := h.node("node-1", nil, nil).ReplicaJoin(ctxT(t))
			return err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, c.opts)
			before := h.denials(c.class)
			err := c.run(t, h)
			want := api.ErrDenied
			if c.class == attest.ClassInternal {
				want = api.ErrRetryLater // keyd's own failure decides nothing
			}
			if !errors.Is(err, want) {
				t.Fatalf("got %v, want %v", err, want)
			}
			if got := h.waitDenials(c.class, before+1); got != before+1 {
				t.Errorf("keyd_admissions_total{result=denied,class=%s} = %v, want %v", c.class, got, before+1)
			}
			for _, other := range attest.Classes {
				if other != c.class && h.denials(other) != 0 {
					t.Errorf("also counted as %s", other)
				}
			}
		})
	}
}

// failOnAdmit fails only admission appends, so init still works.
type failOnAdmit struct{ Log }

func (f *failOnAdmit) AppendTx(tx store.Tx, r auditlog.Record) (int64, error) {
	if r.Type == auditlog.TypeAdmission {
		return 0, errors.New("test: log append fails")
	}
	return f.Log.AppendTx(tx, r)
}

func nodeClaims(id string) attest.Claims {
	return attest.Claims{NodeID: id, Role: attest.RoleNode, Profile: snpNodeProfile}
}

// keydPeer is an emulated keyd replica (role keyd, keyd profile).
func (h *harness) keydPeer(id string) *api.Client {
	return h.client(h.clientConfig(attest.Claims{NodeID: id, Role: attest.RoleKeyd, Profile: snpKeydProfile},
		&snp.Attester{Transport: &snptest.Transport{Chain: h.chain}}))
}

// bindingLiar is an attester whose evidence commits to another binding
// than the session's.
type bindingLiar struct {
	attest.Attester
	mutate func(*attest.Binding)
}

func (b *bindingLiar) Attest(ctx context.Context, chal []byte, bd attest.Binding) (*attest.Evidence, error) {
	b.mutate(&bd)
	return b.Attester.Attest(ctx, chal, bd)
}
