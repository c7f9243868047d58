package keyd

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/keyd/api"
)

// fakeKube records what keyd asks of the join-material issuer.
type fakeKube struct {
	mu      sync.Mutex
	issued  []string // "node/cp" or "node/worker"
	revoked []string
	fail    error
}

func (f *fakeKube) Issue(_ context.Context, id string, cp bool) (*api.KubeJoin, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	kind := "worker"
	if cp {
		kind = "cp"
	}
	f.issued = append(f.issued, id+"/"+kind)
	return &api.KubeJoin{APIServerEndpoint: "10.0.0.1:6443", Token: "abcdef.0123456789abcdef",
		CACertHashes: []string{"sha256:" + strings.Repeat("ab", 32)}, Expires: time.Now().Add(10 * time.Minute)}, nil
}

func (f *fakeKube) Revoke(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, id)
	return nil
}

func (f *fakeKube) get() ([]string, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.issued), slices.Clone(f.revoked)
}

// TestKubeJoinIssuedAndRevoked: an admitted node's response carries its
// join material (control-plane by the verified profile); revoking it, by
// node or by image version, deletes its token at once.
func TestKubeJoinIssuedAndRevoked(t *testing.T) {
	fk := &fakeKube{}
	h := newHarness(t, harnessOpts{kube: fk, kubeCfg: &KubeConfig{Kubeconfig: "k", CACert: "ca.pem", APIServerEndpoint: "10.0.0.1:6443", ControlPlaneProfiles: []string{snpNodeProfile}}})
	ctx := ctxT(t)
	resp, err := h.node("node-1", []string{testDiskA}, nil).Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Kube == nil || resp.Kube.Token != "abcdef.0123456789abcdef" {
		t.Fatalf("admission response kube = %+v, want the issued join material", resp.Kube)
	}
	if _, err := h.node("node-2", []string{testDiskA}, nil).Admit(ctx); err != nil {
		t.Fatal(err)
	}
	if issued, _ := fk.get(); !slices.Equal(issued, []string{"node-1/cp", "node-2/cp"}) {
		t.Errorf("issued %v, want both as control-plane joiners (their profile is listed)", issued)
	}
	if err := h.ownerClient().Revoke(ctx, h.ownerRequest(api.ActionRevokeNode, "node-1", 0)); err != nil {
		t.Fatal(err)
	}
	if _, revoked := fk.get(); !slices.Equal(revoked, []string{"node-1"}) {
		t.Errorf("revoked %v after revoking node-1", revoked)
	}
	if err := h.ownerClient().Revoke(ctx, h.ownerRequest(api.ActionRevokeVersion, "", 1)); err != nil {
		t.Fatal(err)
	}
	_, revoked := fk.get()
	slices.Sort(revoked)
	if revoked = slices.Compact(revoked); !slices.Equal(revoked, []string{"node-1", "node-2"}) {
		t.Errorf("revoked %v after revoking image version 1, want node-2's token deleted too", revoked)
	}
}

// TestKubeJoinWorker: a profile not listed joins as a worker.
func TestKubeJoinWorker(t *testing.T) {
	fk := &fakeKube{}
	h := newHarness(t, harnessOpts{kube: fk, kubeCfg: &KubeConfig{Kubeconfig: "k", CACert: "ca.pem", APIServerEndpoint: "10.0.0.1:6443", ControlPlaneProfiles: []string{"other"}}})
	if _, err := h.node("node-1", []string{testDiskA}, nil).Admit(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if issued, _ := fk.get(); !slices.Equal(issued, []string{"node-1/worker"}) {
		t.Errorf("issued %v, want a worker join", issued)
	}
}

// TestKubeJoinFailureStillAdmits: the API server being down costs the node
// its join material, never its admission (disk keys, mesh).
func TestKubeJoinFailureStillAdmits(t *testing.T) {
	fk := &fakeKube{fail: errors.New("apiserver unreachable")}
	h := newHarness(t, harnessOpts{kube: fk})
	resp, err := h.node("node-1", []string{testDiskA}, nil).Admit(ctxT(t))
	if err != nil {
		t.Fatalf("admission with the API server down: %v", err)
	}
	if resp.Kube != nil || len(resp.DiskKeys) != 1 {
		t.Errorf("response kube %+v disk keys %d, want no join material and the disk key", resp.Kube, len(resp.DiskKeys))
	}
}

func TestKubeConfigValidate(t *testing.T) {
	ok := KubeConfig{Kubeconfig: "k", CACert: "ca.pem", APIServerEndpoint: "10.0.0.1:6443"}
	for name, edit := range map[string]func(*KubeConfig){
		"kubeconfig": func(c *KubeConfig) { c.Kubeconfig = "" },
		"ca_cert":    func(c *KubeConfig) { c.CACert = "" },
		"token_ttl":  func(c *KubeConfig) { c.TokenTTL = Duration(2 * time.Hour) },
		"api_server": func(c *KubeConfig) { c.APIServerEndpoint = "10.0.0.1" },
	} {
		c := ok
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
		edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "config.kube.") {
			t.Errorf("%s: %v", name, err)
		}
	}
}
