package qemutests

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/internal/atls"
	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/keyd/api"
	"github.com/palisade-cc/palisade/qemu-tests/vm"
)

// Ports of the guests' daemons (attestd serve, meshd run defaults).
const (
	nodeAttestPort = 7444
	wireGuardPort  = 51820
)

// meshOwner is what the rack's owner keeps after `verifier init`: the
// owner key that signs revocations, and verifying sessions with keyd and
// with nodes.
type meshOwner struct {
	key       ed25519.PrivateKey
	keyd      *api.Client
	verifiers map[attest.Platform]attest.Verifier
}

// revoke sends the owner-signed revocation of node, as `verifier revoke`.
func (o *meshOwner) revoke(ctx context.Context, node string) error {
	nonce := make([]byte, api.OwnerNonceSize)
	rand.Read(nonce)
	req := &api.OwnerRequest{Action: api.ActionRevokeNode, ClusterID: testCluster, NodeID: node,
		Timestamp: time.Now().Unix(), Nonce: nonce}
	req.Sign(o.key)
	return o.keyd.Revoke(ctx, req)
}

// attestNode is `verifier node ADDR` from the test process: no evidence of
// its own, the pinned roots, the manifest's reference of the profile the
// node claims. The dial runs inside the rack's namespace.
func (r *rack) attestNode(o *meshOwner, addr string) (*atls.Conn, error) {
	refs := r.img.Refs
	cfg := &atls.Config{ClusterID: testCluster, Claims: attest.Claims{NodeID: "owner", Role: attest.RoleNode, Profile: "owner"},
		Verifiers: o.verifiers,
		Reference: func(_ context.Context, peer attest.Claims) (*attest.Reference, error) {
			for i := range refs {
				if peer.Role == attest.RoleNode && refs[i].Profile == peer.Profile {
					return &refs[i], nil
				}
			}
			return nil, attest.Denyf(attest.ClassPolicy, "no reference %s/%s", peer.Role, peer.Profile)
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var c *atls.Conn
	err := r.net.Do(func() error {
		var err error
		c, err = atls.Dial(ctx, "tcp", addr, cfg)
		return err
	})
	return c, err
}

// TestMesh boots two TPM guests from the rack. Each attests to keyd
// (attestd), keeps its attested session (attestd serve) and forms a kernel
// WireGuard mesh (meshd run): each console shows the other's handshake,
// and keyd's peer set lists both with the endpoints they claimed. The
// owner attests one guest live on its attestation port. Then the owner
// revokes one guest, and the other's console shows it removed within 5 s.
func TestMesh(t *testing.T) {
	vm.Require(t)
	r := newRack(t, "10.79.0.0/24")
	owner := r.owner
	img := r.img
	rules := []acceptRule{
		{mac: "52:54:00:79:00:01", profile: "node", image: img.UKI},
		{mac: "52:54:00:79:00:02", profile: "node", image: img.UKI},
	}
	r.serve(rules...)
	vms := make([]*vm.VM, 2)
	ids := make([]string, 2)
	for i, rule := range rules {
		vms[i] = vm.Start(t, vm.Config{Name: fmt.Sprintf("mesh-%d", i), TPM: vm.NewSWTPM(t, img.CA), Net: r.net, MAC: rule.mac,
			Timeout: 8 * time.Minute})
	}
	for i, v := range vms {
		m := v.Expect(`^attestd: admitted node=(\S+) profile=(\S+) platform=tpm`, bootTimeout)
		ids[i] = m[1]
		v.Expect(`^attestd: serving node=`+regexp.QuoteMeta(ids[i])+` `, 60*time.Second)
		v.Expect(`^meshd: running interface=palisade0 `, 60*time.Second)
	}
	if ids[0] == ids[1] {
		t.Fatalf("both guests are node %s", ids[0])
	}
	// Kernel WireGuard with a 5 s keep-alive: each side initiates a
	// handshake as soon as it has the other as a peer.
	for i, v := range vms {
		other := ids[1-i]
		v.Expect(`^meshd: peer `+regexp.QuoteMeta(other)+` added revision=\d+ endpoint=10\.79\.0\.\d+:51820 `, 90*time.Second)
		v.Expect(`^meshd: peer `+regexp.QuoteMeta(other)+` handshake$`, 60*time.Second)
	}
	for i, v := range vms {
		for _, l := range v.Console.Lines() {
			if strings.HasPrefix(l.Text, "attestd: admitted") || strings.HasPrefix(l.Text, "attestd: serving") || strings.HasPrefix(l.Text, "meshd: ") {
				t.Logf("guest %d at %6.1fs: %s", i, l.At.Seconds(), l.Text)
			}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, err := owner.keyd.Nodes(ctx)
	if err != nil {
		t.Fatalf("owner's registry: %v", err)
	}
	hosts := map[string]string{}
	for _, n := range nodes.Nodes {
		if len(n.Endpoints) != 1 {
			t.Errorf("node %s claims endpoints %v, want its lease address at %d", n.NodeID, n.Endpoints, wireGuardPort)
			continue
		}
		ap, err := netip.ParseAddrPort(n.Endpoints[0])
		if err != nil || !r.net.Prefix.Contains(ap.Addr()) || ap.Port() != wireGuardPort {
			t.Errorf("node %s endpoint %q: want an address of %s at %d", n.NodeID, n.Endpoints[0], r.net.Prefix, wireGuardPort)
		}
		hosts[n.NodeID] = ap.Addr().String()
	}
	if len(hosts) != 2 || hosts[ids[0]] == "" || hosts[ids[1]] == "" {
		t.Fatalf("keyd's registry %+v, want both guests with endpoints", nodes.Nodes)
	}

	// verifier node: live attestation on the guest's attestation port
	// (verifier cluster dials the first endpoint's host there).
	addr := net.JoinHostPort(hosts[ids[0]], fmt.Sprint(nodeAttestPort))
	c, err := r.attestNode(owner, addr)
	if err != nil {
		vms[0].Fail("live attestation of %s at %s: %v", ids[0], addr, err)
	}
	v, claims := c.PeerVerified(), c.PeerClaims()
	c.Close()
	if v == nil || v.Platform != attest.PlatformTPM || v.Profile != tpmProfile || claims.NodeID != ids[0] {
		t.Errorf("live attestation proved %+v for claims %+v, want %s on tpm as %s", v, claims, tpmProfile, ids[0])
	}
	for _, n := range nodes.Nodes {
		if n.NodeID == ids[0] && (v == nil || n.HardwareID != v.HardwareID || !maps.Equal(n.Measurements, v.Measurements)) {
			t.Errorf("live evidence (hardware %v) is not the admitted node's (hardware %s)", v, n.HardwareID)
		}
	}

	// Revocation: the owner revokes guest 1; guest 0 drops it.
	start := time.Now()
	if err := owner.revoke(ctx, ids[1]); err != nil {
		t.Fatalf("revoke %s: %v", ids[1], err)
	}
	re := regexp.MustCompile(`^meshd: peer ` + regexp.QuoteMeta(ids[1]) + ` removed`)
	if _, err := vms[0].Console.Wait(re, 10*time.Second); err != nil {
		vms[0].Fail("peer %s not removed within 10 s of its revocation: %v", ids[1], err)
	}
	took := time.Since(start)
	t.Logf("revocation to removal on the other guest's console: %s", took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("peer removed %s after the revocation, want at most 5 s", took)
	}
}
