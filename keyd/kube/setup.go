package kube

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	kubeadmapi "k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm"
	"k8s.io/kubernetes/cmd/kubeadm/app/phases/bootstraptoken/node"
	"k8s.io/kubernetes/cmd/kubeadm/app/phases/copycerts"
)

// clusterInfoRole is kubeadm's name for the Role that lets anonymous
// clients read cluster-info (cmd/kubeadm/app/phases/bootstraptoken/
// clusterinfo: BootstrapSignerClusterRoleName).
const clusterInfoRole = "kubeadm:bootstrap-signer-clusterinfo"

// Setup does, once per cluster, the work of kubeadm init's bootstrap-token
// phase, which Palisade's first control-plane node skips
// (internal/kubeconf.SkippedInitPhase) because that phase also creates a
// 24-hour token for any node:
//   - the cluster-info ConfigMap in kube-public (the API server's address and
//     CA, which the bootstrapsigner controller signs with each token), and
//     the Role that lets anonymous clients read it: kubeadm's token
//     discovery;
//   - kubeadm's RBAC for the bootstrappers' group: post CSRs, have them
//     auto-approved, get nodes, and rotate node certificates (kubeadm's own
//     functions, cmd/kubeadm/app/phases/bootstraptoken/node).
//
// It is idempotent.
func (i *Issuer) Setup(ctx context.Context) error {
	if err := i.Validate(); err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	// kubeadm writes cluster-info with the cluster under the empty name;
	// its discovery reads the first cluster it finds.
	cfg.Clusters[""] = &clientcmdapi.Cluster{
		Server:                   "https://" + i.APIServerEndpoint,
		CertificateAuthorityData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: i.CACert.Raw}),
	}
	kc, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("kube: cluster-info kubeconfig: %w", err)
	}
	if err := upsert(ctx, i.Client.CoreV1().ConfigMaps(metav1.NamespacePublic), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: bootstrapapi.ConfigMapClusterInfo, Namespace: metav1.NamespacePublic},
		Data:       map[string]string{bootstrapapi.KubeConfigKey: string(kc)},
	}); err != nil {
		return fmt.Errorf("kube: cluster-info ConfigMap: %w", err)
	}
	if err := upsert(ctx, i.Client.RbacV1().Roles(metav1.NamespacePublic), &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: clusterInfoRole, Namespace: metav1.NamespacePublic},
		Rules: []rbacv1.PolicyRule{{
			Verbs:         []string{"get"},
			APIGroups:     []string{""},
			Resources:     []string{"configmaps"},
			ResourceNames: []string{bootstrapapi.ConfigMapClusterInfo},
		}},
	}); err != nil {
		return fmt.Errorf("kube: cluster-info Role: %w", err)
	}
	if err := upsert(ctx, i.Client.RbacV1().RoleBindings(metav1.NamespacePublic), &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: clusterInfoRole, Namespace: metav1.NamespacePublic},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: clusterInfoRole},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, Name: "system:anonymous"}},
	}); err != nil {
		return fmt.Errorf("kube: cluster-info RoleBinding: %w", err)
	}
	for _, f := range []struct {
		name string
		fn   func(kubernetes.Interface) error
	}{
		{"post CSRs", node.AllowBootstrapTokensToPostCSRs},
		{"get nodes", node.AllowBootstrapTokensToGetNodes},
		{"auto-approve node CSRs", node.AutoApproveNodeBootstrapTokens},
		{"auto-approve certificate rotation", node.AutoApproveNodeCertificateRotation},
	} {
		if err := f.fn(i.Client); err != nil {
			return fmt.Errorf("kube: bootstrappers' RBAC (%s): %w", f.name, err)
		}
	}
	return nil
}

type upserter[T any] interface {
	Create(context.Context, T, metav1.CreateOptions) (T, error)
	Update(context.Context, T, metav1.UpdateOptions) (T, error)
}

func upsert[T any](ctx context.Context, c upserter[T], obj T) error {
	_, err := c.Create(ctx, obj, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = c.Update(ctx, obj, metav1.UpdateOptions{})
	}
	return err
}

// CertUploader is the production CertificateKeys: it encrypts the cluster's
// CA keys (kubeadm's certificate list for control-plane joins) with a fresh
// AES-256 key into the kubeadm-certs Secret, with kubeadm's own copycerts
// phase, and hands that key to control-plane joiners until Reuse passes.
// It must run where the CA keys are: a control-plane node's keyd.
//
// kubeadm lets the kubeadm-certs Secret live two hours (an owner token
// with that TTL) and lets every bootstrap token of JoinGroup read it; the
// ciphertext is useless without the key, which only control-plane joiners
// receive.
type CertUploader struct {
	Client kubernetes.Interface
	// CertificatesDir is the PKI directory (default /etc/kubernetes/pki).
	CertificatesDir string
	// Reuse is how long one key serves joiners (default DefaultCertReuse):
	// one key for concurrent joiners, since each upload replaces the
	// Secret, and always well inside kubeadm's two hours.
	Reuse time.Duration
	Now   func() time.Time

	mu       sync.Mutex
	key      string
	uploaded time.Time
}

// DefaultCertReuse keeps a key for an hour: kubeadm-certs expires after two
// (cmd/kubeadm/app/constants: DefaultCertTokenDuration), so a key handed
// out is good for at least an hour, far beyond a join token's TTL.
const DefaultCertReuse = time.Hour

var _ CertificateKeys = (*CertUploader)(nil)

// CertificateKey returns the current key, uploading the certificates under
// a new key first when there is none or it is older than Reuse.
func (u *CertUploader) CertificateKey(ctx context.Context) (string, error) {
	if u.Client == nil {
		return "", errors.New("kube: CertUploader.Client is required")
	}
	now := time.Now
	if u.Now != nil {
		now = u.Now
	}
	reuse := u.Reuse
	if reuse <= 0 {
		reuse = DefaultCertReuse
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.key != "" && now().Sub(u.uploaded) < reuse {
		return u.key, nil
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	key, err := copycerts.CreateCertificateKey()
	if err != nil {
		return "", fmt.Errorf("kube: certificate key: %w", err)
	}
	dir := u.CertificatesDir
	if dir == "" {
		dir = "/etc/kubernetes/pki"
	}
	cfg := &kubeadmapi.InitConfiguration{}
	cfg.CertificatesDir = dir
	if err := copycerts.UploadCerts(u.Client, cfg, key); err != nil {
		return "", fmt.Errorf("kube: upload kubeadm-certs from %s: %w", dir, err)
	}
	u.key, u.uploaded = key, now()
	return key, nil
}

// Rotate forgets the current key: the next control-plane join re-encrypts
// kubeadm-certs under a new one, so a key given out earlier opens nothing.
func (u *CertUploader) Rotate() {
	u.mu.Lock()
	u.key = ""
	u.mu.Unlock()
}

// Files are what a keyd configuration names for the issuer (keyd's
// config.kube): paths, not clients, so the whole construction is here.
type Files struct {
	// Kubeconfig is keyd's own identity (bootstrap-token Secrets in
	// kube-system, CSRs).
	Kubeconfig string
	// CACert is the cluster CA (PEM) nodes pin by hash.
	CACert            string
	APIServerEndpoint string
	TTL               time.Duration
	// ControlPlane makes the issuer upload the control-plane certificates
	// from CertificatesDir (default /etc/kubernetes/pki) and hand their
	// key to control-plane joiners.
	ControlPlane    bool
	CertificatesDir string
}

// FromFiles builds an Issuer from f, validates it and runs Setup (the
// cluster-info ConfigMap, the bootstrappers' RBAC). The caller runs its
// sweep loop (Run).
func FromFiles(ctx context.Context, f Files, log *slog.Logger) (*Issuer, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", f.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", f.Kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", f.Kubeconfig, err)
	}
	b, err := os.ReadFile(f.CACert)
	if err != nil {
		return nil, fmt.Errorf("ca_cert: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("ca_cert %s: no PEM CERTIFICATE", f.CACert)
	}
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca_cert %s: %w", f.CACert, err)
	}
	iss := &Issuer{Client: cs, APIServerEndpoint: f.APIServerEndpoint, CACert: ca, TTL: f.TTL, Log: log}
	if f.ControlPlane {
		iss.CertificateKeys = &CertUploader{Client: cs, CertificatesDir: f.CertificatesDir}
	}
	if err := iss.Validate(); err != nil {
		return nil, err
	}
	if err := iss.Setup(ctx); err != nil {
		return nil, fmt.Errorf("kube setup (cluster-info, bootstrappers' RBAC): %w", err)
	}
	return iss, nil
}
