package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"regexp"
	"sort"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraptokenv1 "k8s.io/kubernetes/cmd/kubeadm/app/apis/bootstraptoken/v1"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func testCA(t testing.TB) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kubernetes"},
		NotBefore:             t0.Add(-time.Hour),
		NotAfter:              t0.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type fakeKeys struct {
	key     string
	rotated int
}

func (f *fakeKeys) CertificateKey(context.Context) (string, error) { return f.key, nil }
func (f *fakeKeys) Rotate()                                        { f.rotated++ }

func newIssuer(t *testing.T) (*Issuer, *fake.Clientset, *time.Time, *fakeKeys) {
	t.Helper()
	cs := fake.NewClientset()
	now := t0
	keys := &fakeKeys{key: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"}
	return &Issuer{
		Client:            cs,
		APIServerEndpoint: "[fd00::1]:6443",
		CACert:            testCA(t),
		CertificateKeys:   keys,
		Now:               func() time.Time { return now },
	}, cs, &now, keys
}

func tokens(t *testing.T, cs *fake.Clientset) map[string]corev1.Secret {
	t.Helper()
	l, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]corev1.Secret{}
	for _, s := range l.Items {
		m[s.Name] = s
	}
	return m
}

func names(m map[string]corev1.Secret) []string {
	var out []string
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

var tokenRE = regexp.MustCompile(`^([a-z0-9]{6})\.([a-z0-9]{16})$`)

func TestIssue(t *testing.T) {
	ctx := context.Background()
	iss, cs, _, _ := newIssuer(t)
	j, err := iss.Issue(ctx, "node-1", false)
	if err != nil {
		t.Fatal(err)
	}
	m := tokenRE.FindStringSubmatch(j.Token)
	if m == nil {
		t.Fatalf("token %q is not in kubeadm's format", j.Token)
	}
	// The pin is sha256 over the CA's SubjectPublicKeyInfo (kubeadm's
	// --discovery-token-ca-cert-hash), computed here independently.
	spki := sha256.Sum256(iss.CACert.RawSubjectPublicKeyInfo)
	if want := []string{"sha256:" + hex.EncodeToString(spki[:])}; !cmp.Equal(j.CACertHashes, want) {
		t.Errorf("CACertHashes = %q, want %q", j.CACertHashes, want)
	}
	if j.CertificateKey != "" {
		t.Errorf("worker got a certificate key")
	}
	if !j.Expires.Equal(t0.Add(DefaultTTL)) || j.APIServerEndpoint != "[fd00::1]:6443" {
		t.Errorf("Expires %v endpoint %q", j.Expires, j.APIServerEndpoint)
	}

	all := tokens(t, cs)
	s, ok := all["bootstrap-token-"+m[1]]
	if len(all) != 1 || !ok {
		t.Fatalf("secrets %v, want bootstrap-token-%s", names(all), m[1])
	}
	if s.Type != bootstrapapi.SecretTypeBootstrapToken {
		t.Errorf("type %q", s.Type)
	}
	wantData := map[string]string{
		"token-id":                       m[1],
		"token-secret":                   m[2],
		"expiration":                     t0.Add(DefaultTTL).Format(time.RFC3339),
		"usage-bootstrap-authentication": "true",
		"usage-bootstrap-signing":        "true",
		"auth-extra-groups":              JoinGroup,
		"description":                    "palisade: kubeadm join of attested node node-1",
	}
	gotData := map[string]string{}
	for k, v := range s.Data {
		gotData[k] = string(v)
	}
	if d := cmp.Diff(wantData, gotData); d != "" {
		t.Errorf("Secret data (-want +got):\n%s", d)
	}
	if s.Labels[LabelNode] != "node-1" || s.Labels[LabelManagedBy] != managedBy || s.Labels[LabelControlPlane] != "" {
		t.Errorf("labels %v", s.Labels)
	}
	// kubeadm reads it back as a valid token of the same value.
	bt, err := bootstraptokenv1.BootstrapTokenFromSecret(&s)
	if err != nil {
		t.Fatalf("kubeadm's BootstrapTokenFromSecret: %v", err)
	}
	if bt.Token.String() != j.Token {
		t.Errorf("kubeadm reads token %s", bt.Token.ID)
	}
}

func TestIssueControlPlane(t *testing.T) {
	ctx := context.Background()
	iss, cs, _, keys := newIssuer(t)
	j, err := iss.Issue(ctx, "cp-2", true)
	if err != nil {
		t.Fatal(err)
	}
	if j.CertificateKey != keys.key {
		t.Errorf("CertificateKey %q", j.CertificateKey)
	}
	for _, s := range tokens(t, cs) {
		if s.Labels[LabelControlPlane] != "true" {
			t.Errorf("control-plane token not labelled: %v", s.Labels)
		}
	}
	// Without a key source, control-plane joins are refused and no token
	// is left behind.
	iss.CertificateKeys = nil
	if _, err := iss.Issue(ctx, "cp-3", true); !errors.Is(err, ErrNoControlPlane) {
		t.Fatalf("Issue without CertificateKeys: %v, want ErrNoControlPlane", err)
	}
	if n := len(tokens(t, cs)); n != 1 {
		t.Errorf("%d tokens, want 1 (cp-2's)", n)
	}
}

func TestOneTokenPerNode(t *testing.T) {
	ctx := context.Background()
	iss, cs, _, _ := newIssuer(t)
	a, err := iss.Issue(ctx, "node-1", false)
	if err != nil {
		t.Fatal(err)
	}
	other, err := iss.Issue(ctx, "node-2", false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := iss.Issue(ctx, "node-1", false)
	if err != nil {
		t.Fatal(err)
	}
	if a.Token == b.Token {
		t.Fatal("same token twice")
	}
	want := []string{"bootstrap-token-" + b.Token[:6], "bootstrap-token-" + other.Token[:6]}
	sort.Strings(want)
	if got := names(tokens(t, cs)); !cmp.Equal(got, want) {
		t.Errorf("secrets %v, want %v (node-1's first token replaced)", got, want)
	}
}

func TestRevoke(t *testing.T) {
	ctx := context.Background()
	iss, cs, _, keys := newIssuer(t)
	if _, err := iss.Issue(ctx, "node-1", false); err != nil {
		t.Fatal(err)
	}
	keep, err := iss.Issue(ctx, "node-2", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := iss.Revoke(ctx, "node-1"); err != nil {
		t.Fatal(err)
	}
	if got := names(tokens(t, cs)); !cmp.Equal(got, []string{"bootstrap-token-" + keep.Token[:6]}) {
		t.Errorf("after Revoke(node-1): %v", got)
	}
	if keys.rotated != 0 {
		t.Errorf("worker revocation rotated the certificate key")
	}
	if _, err := iss.Issue(ctx, "cp-2", true); err != nil {
		t.Fatal(err)
	}
	if err := iss.Revoke(ctx, "cp-2"); err != nil {
		t.Fatal(err)
	}
	if keys.rotated != 1 {
		t.Errorf("control-plane revocation: rotated %d times, want 1", keys.rotated)
	}
	// Revoking a node without tokens is fine.
	if err := iss.Revoke(ctx, "node-9"); err != nil {
		t.Fatal(err)
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	iss, cs, _, _ := newIssuer(t)
	// A node ID that would widen a label selector, or is no label value.
	for _, id := range []string{"", "node-1,palisade.dev/node!=x", "a=b", "Node 1", "-x", string(make([]byte, 64))} {
		if _, err := iss.Issue(ctx, id, false); !errors.Is(err, ErrNodeID) {
			t.Errorf("Issue(%q): %v, want ErrNodeID", id, err)
		}
		if err := iss.Revoke(ctx, id); !errors.Is(err, ErrNodeID) {
			t.Errorf("Revoke(%q): %v, want ErrNodeID", id, err)
		}
	}
	iss.TTL = MaxTTL + time.Second
	if _, err := iss.Issue(ctx, "node-1", false); err == nil {
		t.Error("TTL above MaxTTL accepted")
	}
	iss.TTL = 0
	iss.NewToken = func() (string, error) { return "NOT-A-TOKEN", nil }
	if _, err := iss.Issue(ctx, "node-1", false); err == nil {
		t.Error("malformed generated token accepted")
	}
	if n := len(tokens(t, cs)); n != 0 {
		t.Errorf("%d tokens left after refusals", n)
	}
}

func TestSweep(t *testing.T) {
	ctx := context.Background()
	iss, cs, now, _ := newIssuer(t)
	used, err := iss.Issue(ctx, "used", false)
	if err != nil {
		t.Fatal(err)
	}
	pending, err := iss.Issue(ctx, "pending", false)
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := iss.Issue(ctx, "fresh", false)
	if err != nil {
		t.Fatal(err)
	}
	// A bootstrap token this package did not create: never touched.
	foreign := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-abcdef", Namespace: metav1.NamespaceSystem},
		Type:       bootstrapapi.SecretTypeBootstrapToken,
		Data:       map[string][]byte{"token-id": []byte("abcdef"), "expiration": []byte(t0.Add(-time.Hour).Format(time.RFC3339))},
	}
	if _, err := cs.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, foreign, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	csr := func(name, tokenID string, cert []byte) {
		t.Helper()
		c := &certv1.CertificateSigningRequest{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       certv1.CertificateSigningRequestSpec{Username: bootstrapapi.BootstrapUserPrefix + tokenID},
			Status:     certv1.CertificateSigningRequestStatus{Certificate: cert},
		}
		if _, err := cs.CertificatesV1().CertificateSigningRequests().Create(ctx, c, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	csr("csr-used", used.Token[:6], []byte("issued"))
	csr("csr-pending", pending.Token[:6], nil) // not approved yet: still needed

	n, err := iss.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"bootstrap-token-abcdef", "bootstrap-token-" + fresh.Token[:6], "bootstrap-token-" + pending.Token[:6]}
	sort.Strings(want)
	if got := names(tokens(t, cs)); n != 1 || !cmp.Equal(got, want) {
		t.Errorf("after sweep: deleted %d, left %v, want 1 deleted, %v left", n, got, want)
	}

	// Expiry: one second before, nothing; at the expiration, the rest.
	*now = t0.Add(DefaultTTL - time.Second)
	if n, err := iss.Sweep(ctx); err != nil || n != 0 {
		t.Errorf("sweep before expiry: %d, %v", n, err)
	}
	*now = t0.Add(DefaultTTL)
	if n, err := iss.Sweep(ctx); err != nil || n != 2 {
		t.Errorf("sweep at expiry: %d, %v, want 2", n, err)
	}
	if got := names(tokens(t, cs)); !cmp.Equal(got, []string{"bootstrap-token-abcdef"}) {
		t.Errorf("left %v, want only the foreign token", got)
	}
}
