package kubeconf

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm"
	"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/validation"
)

const (
	testToken  = "abcdef.0123456789abcdef"
	testHash   = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	testCertKy = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
)

func testCluster() Cluster {
	return Cluster{
		ControlPlaneEndpoint: "[fd00:70a1::1]:6443",
		PodSubnet:            "10.244.0.0/16",
		ServiceSubnet:        "10.96.0.0/12",
	}
}

func testNode(name string) Node {
	return Node{Name: name, MeshAddress: netip.MustParseAddr("fd00:70a1::2")}
}

func testJoin() Join {
	return Join{Token: testToken, CACertHashes: []string{testHash}}
}

// decodeInit reads YAML the way kubeadm init --config does and returns the
// internal InitConfiguration with its ClusterConfiguration.
func decodeInit(t *testing.T, doc []byte) *kubeadm.InitConfiguration {
	t.Helper()
	objs, err := Decode(doc)
	if err != nil {
		t.Fatalf("Decode: %v\n%s", err, doc)
	}
	if len(objs) != 2 {
		t.Fatalf("Decode: %d objects, want 2", len(objs))
	}
	init, ok := objs[0].(*kubeadm.InitConfiguration)
	if !ok {
		t.Fatalf("document 0 is %T, want InitConfiguration", objs[0])
	}
	cc, ok := objs[1].(*kubeadm.ClusterConfiguration)
	if !ok {
		t.Fatalf("document 1 is %T, want ClusterConfiguration", objs[1])
	}
	init.ClusterConfiguration = *cc
	// kubeadm's API defaulting adds one token without a value, which its
	// dynamic defaulting fills at run time; with the bootstrap-token phase
	// skipped it is never created. Without a value kubeadm's validation
	// would dereference nil, so do what kubeadm does at run time.
	for _, bt := range init.BootstrapTokens {
		if bt.Token != nil {
			t.Fatalf("the init configuration carries a bootstrap token %s", bt.Token.ID)
		}
	}
	init.BootstrapTokens = nil
	return init
}

func TestInitConfig(t *testing.T) {
	init, cluster, err := InitConfig(testCluster(), testNode("cp-1"))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := Marshal(init, cluster)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"apiVersion: kubeadm.k8s.io/v1beta4", "kind: InitConfiguration", "kind: ClusterConfiguration", "\n---\n"} {
		if !bytes.Contains(doc, []byte(want)) {
			t.Errorf("YAML lacks %q:\n%s", want, doc)
		}
	}
	// The bytes, read back as kubeadm reads them, pass kubeadm's validation.
	got := decodeInit(t, doc)
	if errs := validation.ValidateInitConfiguration(got); len(errs) != 0 {
		t.Fatalf("kubeadm's validation of the decoded YAML: %v", errs.ToAggregate())
	}
	if !cmp.Equal(got.SkipPhases, []string{SkippedInitPhase}) {
		t.Errorf("SkipPhases = %q, want [%s] (keyd issues per-node tokens)", got.SkipPhases, SkippedInitPhase)
	}
	want := map[string]string{
		"controlPlaneEndpoint": "[fd00:70a1::1]:6443",
		"podSubnet":            "10.244.0.0/16",
		"serviceSubnet":        "10.96.0.0/12",
		"dnsDomain":            "cluster.local",
		"advertiseAddress":     "fd00:70a1::2",
		"name":                 "cp-1",
		"kubernetesVersion":    DefaultKubernetesVersion,
		"node-ip":              "fd00:70a1::2",
		"certSANs":             "fd00:70a1::1,fd00:70a1::2",
	}
	nodeIP, _ := kubeadm.GetArgValue(got.NodeRegistration.KubeletExtraArgs, "node-ip", -1)
	have := map[string]string{
		"controlPlaneEndpoint": got.ControlPlaneEndpoint,
		"podSubnet":            got.Networking.PodSubnet,
		"serviceSubnet":        got.Networking.ServiceSubnet,
		"dnsDomain":            got.Networking.DNSDomain,
		"advertiseAddress":     got.LocalAPIEndpoint.AdvertiseAddress,
		"name":                 got.NodeRegistration.Name,
		"kubernetesVersion":    got.KubernetesVersion,
		"node-ip":              nodeIP,
		"certSANs":             strings.Join(got.APIServer.CertSANs, ","),
	}
	if d := cmp.Diff(want, have); d != "" {
		t.Errorf("decoded InitConfiguration (-want +got):\n%s", d)
	}
}

func TestJoinConfig(t *testing.T) {
	for _, tc := range []struct {
		name         string
		certKey      string
		controlPlane bool
	}{
		{"worker", "", false},
		{"control-plane", testCertKy, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := testJoin()
			j.CertificateKey = tc.certKey
			join, err := JoinConfig(testCluster(), testNode("node-1"), j)
			if err != nil {
				t.Fatal(err)
			}
			doc, err := Marshal(join)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(doc, []byte("kind: JoinConfiguration")) || !bytes.Contains(doc, []byte("apiVersion: kubeadm.k8s.io/v1beta4")) {
				t.Fatalf("YAML lacks apiVersion/kind:\n%s", doc)
			}
			objs, err := Decode(doc)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := objs[0].(*kubeadm.JoinConfiguration)
			if len(objs) != 1 || !ok {
				t.Fatalf("Decode: %d objects, first %T", len(objs), objs[0])
			}
			if errs := validation.ValidateJoinConfiguration(got); len(errs) != 0 {
				t.Fatalf("kubeadm's validation of the decoded YAML: %v", errs.ToAggregate())
			}
			bt := got.Discovery.BootstrapToken
			if bt == nil || bt.Token != testToken || got.Discovery.TLSBootstrapToken != testToken ||
				bt.APIServerEndpoint != "[fd00:70a1::1]:6443" || bt.UnsafeSkipCAVerification ||
				!cmp.Equal(bt.CACertHashes, []string{testHash}) {
				t.Errorf("discovery = %+v, tlsBootstrapToken set: %v", bt, got.Discovery.TLSBootstrapToken != "")
			}
			if (got.ControlPlane != nil) != tc.controlPlane {
				t.Fatalf("controlPlane = %+v, want present: %v", got.ControlPlane, tc.controlPlane)
			}
			if tc.controlPlane && (got.ControlPlane.CertificateKey != testCertKy || got.ControlPlane.LocalAPIEndpoint.AdvertiseAddress != "fd00:70a1::2") {
				t.Errorf("controlPlane = %+v", got.ControlPlane)
			}
		})
	}
}

// Each case starts from a valid configuration and changes one thing; the
// error must name the field and must not carry the secret values.
func TestInvalid(t *testing.T) {
	for _, tc := range []struct {
		name      string
		init      bool
		mutate    func(*Cluster, *Node, *Join)
		wantField string
	}{
		{"bad pod CIDR", true, func(c *Cluster, _ *Node, _ *Join) { c.PodSubnet = "10.244.0.0/33" }, "networking.podSubnet"},
		{"pod CIDR not a CIDR", true, func(c *Cluster, _ *Node, _ *Join) { c.PodSubnet = "pods" }, "networking.podSubnet"},
		{"missing pod CIDR", true, func(c *Cluster, _ *Node, _ *Join) { c.PodSubnet = "" }, "networking.podSubnet"},
		{"bad service CIDR", true, func(c *Cluster, _ *Node, _ *Join) { c.ServiceSubnet = "10.96.0.0/30" }, "networking.serviceSubnet"},
		{"bad endpoint", true, func(c *Cluster, _ *Node, _ *Join) { c.ControlPlaneEndpoint = "fd00::1:6443:x" }, "controlPlaneEndpoint"},
		{"bad node name", true, func(_ *Cluster, n *Node, _ *Join) { n.Name = "Node_1" }, "nodeRegistration.name"},
		{"no mesh address", true, func(_ *Cluster, n *Node, _ *Join) { n.MeshAddress = netip.Addr{} }, "node-ip"},
		{"malformed token", false, func(_ *Cluster, _ *Node, j *Join) { j.Token = "abcdef.0123" }, "discovery.bootstrapToken.token"},
		{"upper-case token", false, func(_ *Cluster, _ *Node, j *Join) { j.Token = "ABCDEF.0123456789abcdef" }, "discovery.bootstrapToken.token"},
		{"missing CA hash", false, func(_ *Cluster, _ *Node, j *Join) { j.CACertHashes = nil }, "discovery.bootstrapToken.caCertHashes"},
		{"malformed CA hash", false, func(_ *Cluster, _ *Node, j *Join) { j.CACertHashes = []string{"sha256:zz"} }, "discovery.bootstrapToken.caCertHashes"},
		{"bad certificate key", false, func(_ *Cluster, _ *Node, j *Join) { j.CertificateKey = "00112233" }, "controlPlane.certificateKey"},
		{"bad discovery endpoint", false, func(_ *Cluster, _ *Node, j *Join) { j.APIServerEndpoint = "no-port" }, "discovery.bootstrapToken.apiServerEndpoint"},
		{"join without mesh address", false, func(_ *Cluster, n *Node, _ *Join) { n.MeshAddress = netip.Addr{} }, "node-ip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, n, j := testCluster(), testNode("node-1"), testJoin()
			tc.mutate(&c, &n, &j)
			var err error
			if tc.init {
				_, _, err = InitConfig(c, n)
			} else {
				_, err = JoinConfig(c, n, j)
			}
			if err == nil {
				t.Fatalf("accepted; want an error naming %s", tc.wantField)
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.wantField) {
				t.Errorf("error %q does not name %s (or is not ErrInvalid)", err, tc.wantField)
			}
			for _, secret := range []string{"0123456789abcdef", j.Token, j.CertificateKey} {
				if len(secret) > 8 && strings.Contains(err.Error(), secret) {
					t.Errorf("error carries a secret value: %q", err)
				}
			}
		})
	}
}

func TestDecodeStrict(t *testing.T) {
	join, err := JoinConfig(testCluster(), testNode("node-1"), testJoin())
	if err != nil {
		t.Fatal(err)
	}
	doc, err := Marshal(join)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(doc); err != nil {
		t.Fatal(err)
	}
	// One unknown field: kubeadm's strict loading refuses it, so must we.
	bad := bytes.Replace(doc, []byte("discovery:\n"), []byte("discovery:\n  unknownField: 1\n"), 1)
	if bytes.Equal(bad, doc) {
		t.Fatal("test did not change the document")
	}
	if _, err := Decode(bad); err == nil {
		t.Error("Decode accepted an unknown field")
	}
}

func FuzzDecode(f *testing.F) {
	init, cluster, err := InitConfig(testCluster(), testNode("cp-1"))
	if err != nil {
		f.Fatal(err)
	}
	doc, _ := Marshal(init, cluster)
	f.Add(doc)
	j := testJoin()
	j.CertificateKey = testCertKy
	join, err := JoinConfig(testCluster(), testNode("node-1"), j)
	if err != nil {
		f.Fatal(err)
	}
	doc, _ = Marshal(join)
	f.Add(doc)
	f.Add([]byte("apiVersion: kubeadm.k8s.io/v1beta4\nkind: Nope\n"))
	f.Add([]byte("---\n---\n{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		objs, err := Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes must survive kubeadm's validation without a
		// panic; its verdict is not the point here.
		for _, o := range objs {
			switch o := o.(type) {
			case *kubeadm.JoinConfiguration:
				_ = validation.ValidateJoinConfiguration(o)
			case *kubeadm.InitConfiguration:
				// Tokens without a value are filled at run time by
				// kubeadm (see decodeInit).
				for _, bt := range o.BootstrapTokens {
					if bt.Token == nil {
						return
					}
				}
				_ = validation.ValidateInitConfiguration(o)
			}
		}
	})
}
