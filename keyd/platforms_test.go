package keyd

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
	"github.com/palisade-cc/palisade/internal/attest/tpm"
	"github.com/palisade-cc/palisade/internal/attest/tpm/tpmtest"
	"github.com/palisade-cc/palisade/keyd/api"
)

// platform is one emulated machine type with its test roots: how a machine
// of it attests, how a peer verifies it, and the reference that accepts it.
// keyd and nodes of the same platform share the emulated hardware.
type platform struct {
	name     attest.Platform
	attester attest.Attester
	verifier attest.Verifier
	ref      *attest.Reference
}

// reference is the platform's reference under the profile of role.
func (p *platform) reference(role attest.Role) *attest.Reference {
	r := *p.ref
	r.Profile = profileOf(p.name, role)
	return &r
}

// profileOf names the hardware profile of role on platform p in the test
// manifests ("tdx-node", "tpm-keyd", …).
func profileOf(p attest.Platform, role attest.Role) string {
	return string(p) + "-" + string(role)
}

// tdxPlatform is a TD of the shared tdxtest fixture: the quote comes from
// the fixture's signer over the binding, the CC event log from a file as
// Linux exposes it; verified against the fixture's root pool and bundle.
func tdxPlatform(t testing.TB) *platform {
	t.Helper()
	f, err := tdxtest.Shared()
	if err != nil {
		t.Fatal(err)
	}
	ccel := filepath.Join(t.TempDir(), "CCEL")
	if err := os.WriteFile(ccel, f.Log.Bytes(4096), 0o600); err != nil {
		t.Fatal(err)
	}
	return &platform{
		name:     attest.PlatformTDX,
		attester: &tdx.Attester{Transport: &tdxtest.Transport{F: f}, CCELPath: ccel},
		verifier: &tdx.Verifier{Roots: f.PKI.Pool(), Getter: &tdx.Bundle{FS: f.Bundle},
			Now: func() time.Time { return tdxtest.Epoch }},
		ref: f.Reference(),
	}
}

// tpmPlatform is the process's one TPM simulator (tpmtest.Start waits for
// the previous one to close; it closes when t ends), with an EK certificate
// from a test CA that the verifier pins.
func tpmPlatform(t testing.TB) *platform {
	t.Helper()
	sim := tpmtest.Start(t, tpmtest.Config{})
	a, err := tpm.NewAttester(sim.RW, tpm.Options{EventLogPath: sim.LogPath})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return &platform{
		name:     attest.PlatformTPM,
		attester: a,
		verifier: tpm.NewVerifier(sim.CA.Roots(), sim.CA.Intermediates()),
		ref:      sim.Reference("tpm"),
	}
}

// snpPlatform is an emulated SEV-SNP machine with its own test chain (not
// the harness's), for keyd or nodes in mixed clusters.
func snpPlatform(t testing.TB) *platform {
	t.Helper()
	c := testChain(t)
	dir := t.TempDir()
	if err := c.WriteBundle(dir, snptest.BundleOptions{}); err != nil {
		t.Fatal(err)
	}
	return &platform{
		name:     attest.PlatformSNP,
		attester: &snp.Attester{Transport: &snptest.Transport{Chain: c}},
		verifier: &snp.Verifier{Roots: c.Roots(), Getter: &snp.Collateral{Dir: dir}},
		ref:      c.Reference(),
	}
}

// pnode is a node on platform p (registered with the harness through
// harnessOpts.nodes, or keyd's own platform).
func (h *harness) pnode(id string, disks []string, p *platform) *api.Client {
	wg := make([]byte, 32)
	copy(wg, id)
	return h.client(h.clientConfig(attest.Claims{NodeID: id, Role: attest.RoleNode, Profile: profileOf(p.name, attest.RoleNode),
		WireGuardKey: wg, DiskUUIDs: disks, Endpoints: []string{id + ":51820"}}, p.attester))
}

// admitOn runs the happy path of one node on platform node against a keyd
// on platform kd: mutual verification, keys, mesh address, peer set, log
// inclusion, and a re-admission that keeps keys and addresses.
func admitOn(t *testing.T, kd, node *platform) {
	t.Helper()
	h := newHarness(t, harnessOpts{keyd: kd, nodes: []*platform{node}})
	ctx := ctxT(t)
	disks := []string{testDiskA, testDiskB}
	id := "node-" + string(node.name)
	resp, err := h.pnode(id, disks, node).Admit(ctx)
	if err != nil {
		t.Fatalf("admit %s node by %s keyd: %v", node.name, kd.name, err)
	}
	h.checkAdmission(ctx, id, disks, resp)
	again, err := h.pnode(id, disks, node).Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again.MeshAddress != resp.MeshAddress || again.DiskKeys[1].UUID != testDiskB || string(again.DiskKeys[1].Key) != string(resp.DiskKeys[1].Key) {
		t.Errorf("re-admission changed keys or address: %+v, first %+v", again, resp)
	}
	nodes, err := h.ownerClient().Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Nodes) != 1 || nodes.Nodes[0].NodeID != id || nodes.Nodes[0].Platform != string(node.name) ||
		nodes.Nodes[0].Profile != profileOf(node.name, attest.RoleNode) {
		t.Errorf("registry: %+v, want %s on %s", nodes.Nodes, id, node.name)
	}
	if got := h.admitted(); got != 2 {
		t.Errorf("admitted metric %v, want 2", got)
	}
}

// TestAdmitTDX: keyd on TDX admits a TD node; each verifies the other's
// quote and CC event log.
func TestAdmitTDX(t *testing.T) {
	p := tdxPlatform(t)
	admitOn(t, p, p)
}

// TestAdmitTPM: keyd and a node share the TPM simulator (one per process);
// keyd challenges the node's EK with a credential and the node keyd's.
func TestAdmitTPM(t *testing.T) {
	p := tpmPlatform(t)
	admitOn(t, p, p)
}

// TestAdmitCrossPlatform: keyd on one platform admits a node on another;
// the node verifies keyd with its platform's verifier and keyd the node
// with the node's, each against the reference of the other's role.
func TestAdmitCrossPlatform(t *testing.T) {
	for _, c := range []struct {
		name       string
		keyd, node func(testing.TB) *platform
	}{
		{"keyd=tpm,node=tdx", tpmPlatform, tdxPlatform},
		{"keyd=tdx,node=sev-snp", tdxPlatform, snpPlatform},
		{"keyd=sev-snp,node=tpm", snpPlatform, tpmPlatform},
		{"keyd=tdx,node=tpm", tdxPlatform, tpmPlatform},
	} {
		t.Run(c.name, func(t *testing.T) {
			admitOn(t, c.keyd(t), c.node(t))
		})
	}
}

// TestAdmitMixedCluster: one keyd (TDX) admits nodes of all three
// platforms; every node ends up in one peer set, each with its platform
// in the registry, and a node cannot pass itself off under another
// platform's profile.
func TestAdmitMixedCluster(t *testing.T) {
	kd, pt, ps := tdxPlatform(t), tpmPlatform(t), snpPlatform(t)
	h := newHarness(t, harnessOpts{keyd: kd, nodes: []*platform{kd, pt, ps}})
	ctx := ctxT(t)
	var last *api.AdmitResponse
	for i, p := range []*platform{kd, pt, ps} {
		id := "mixed-" + string(p.name)
		disks := []string{crashUUID(i)}
		resp, err := h.pnode(id, disks, p).Admit(ctx)
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		h.checkAdmission(ctx, id, disks, resp)
		last = resp
	}
	if last.Peers == nil || len(last.Peers.Peers) != 3 {
		t.Fatalf("peer set after three admissions: %+v", last.Peers)
	}
	// A TPM node claiming the TDX node profile: keyd looks up the TDX
	// reference and the TPM evidence cannot match it.
	wg := make([]byte, 32)
	c := h.client(h.clientConfig(attest.Claims{NodeID: "liar", Role: attest.RoleNode, Profile: profileOf(attest.PlatformTDX, attest.RoleNode),
		WireGuardKey: wg, Endpoints: []string{"liar:51820"}}, pt.attester))
	if _, err := c.Admit(ctx); err == nil {
		t.Fatal("TPM evidence admitted under the TDX profile")
	}
	if got := h.waitDenials(attest.ClassPolicy, 1); got != 1 {
		t.Errorf("policy denials %v, want 1 for TPM evidence under a TDX reference", got)
	}
	nodes, err := h.ownerClient().Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, n := range nodes.Nodes {
		got[n.NodeID] = n.Platform
	}
	want := map[string]string{"mixed-tdx": "tdx", "mixed-tpm": "tpm", "mixed-sev-snp": "sev-snp"}
	if len(got) != 3 || got["mixed-tdx"] != want["mixed-tdx"] || got["mixed-tpm"] != want["mixed-tpm"] || got["mixed-sev-snp"] != want["mixed-sev-snp"] {
		t.Errorf("registry platforms %v, want %v", got, want)
	}
}
