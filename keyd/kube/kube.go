// Package kube issues kubeadm join material for nodes keyd has admitted: one
// bootstrap token per node, minutes long and usable only to join, created as
// a bootstrap-token Secret through the Kubernetes API, plus the pin of the
// cluster CA and, for control-plane joiners, the key of kubeadm-certs.
//
// It is not keyd's admission decision: keyd's core calls Issue only after a
// node's evidence verified, and Revoke when the owner revokes the node. The
// node side turns the material into a JoinConfiguration (internal/kubeconf).
package kube

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	bootstrapapi "k8s.io/cluster-bootstrap/token/api"
	bootstraputil "k8s.io/cluster-bootstrap/token/util"
	bootstraptokenv1 "k8s.io/kubernetes/cmd/kubeadm/app/apis/bootstraptoken/v1"
	"k8s.io/kubernetes/cmd/kubeadm/app/util/pubkeypin"

	"github.com/palisade-cc/palisade/keyd/api"
)

const (
	// DefaultTTL is a token's lifetime: long enough for a node to run
	// kubeadm's discovery and the kubelet's TLS bootstrap after admission,
	// short enough that a leaked token is soon worthless.
	DefaultTTL = 10 * time.Minute
	// MaxTTL bounds Issuer.TTL: join material lives minutes, not hours.
	MaxTTL = time.Hour

	// LabelNode names the node a token was issued to; LabelControlPlane
	// marks tokens issued with the certificate key. LabelManagedBy marks
	// every token this package created: Sweep and Revoke touch no other.
	LabelNode         = "palisade.dev/node"
	LabelControlPlane = "palisade.dev/control-plane"
	LabelManagedBy    = "app.kubernetes.io/managed-by"
	managedBy         = "palisade-keyd"

	// JoinGroup is kubeadm's group for node bootstrap tokens: the group
	// kubeadm's RBAC lets post CSRs and have them auto-approved
	// (cmd/kubeadm/app/constants: NodeBootstrapTokenAuthGroup).
	JoinGroup = "system:bootstrappers:kubeadm:default-node-token"
)

// Usages of every token: authenticate as a bootstrapper (TLS bootstrap,
// kubeadm-certs download) and sign cluster-info (kubeadm's token
// discovery). Nothing else: a token is not a general API credential.
var Usages = []string{"authentication", "signing"}

// Errors callers tell apart.
var (
	// ErrNodeID: the node ID is not usable as a label value.
	ErrNodeID = errors.New("kube: bad node ID")
	// ErrNoControlPlane: a control-plane join was asked of an Issuer with
	// no CertificateKeys.
	ErrNoControlPlane = errors.New("kube: this issuer issues no control-plane join material")
)

// CertificateKeys hands out the key of the kubeadm-certs Secret for
// control-plane joiners (CertUploader in production).
type CertificateKeys interface {
	CertificateKey(ctx context.Context) (string, error)
}

// rotator is implemented by CertificateKeys that can drop their current key
// (CertUploader): a revoked control-plane joiner's key must not stay valid.
type rotator interface{ Rotate() }

// Issuer creates, tracks and deletes per-node bootstrap tokens. Its state
// lives in the Secrets themselves (labelled by node), so several keyd
// replicas and restarts share it. Safe for concurrent use.
type Issuer struct {
	// Client reaches the API server with the right to manage Secrets in
	// kube-system and to list CSRs.
	Client kubernetes.Interface
	// APIServerEndpoint is the host:port nodes' discovery dials.
	APIServerEndpoint string
	// CACert is the cluster CA; nodes pin its public key.
	CACert *x509.Certificate
	// TTL of a token: DefaultTTL when zero, at most MaxTTL.
	TTL time.Duration
	// CertificateKeys, when set, lets Issue serve control-plane joiners.
	CertificateKeys CertificateKeys
	// Log receives one line per token created or deleted (never the
	// token's secret). Nil: discarded.
	Log *slog.Logger
	// Now and NewToken default to time.Now and kubeadm's generator
	// (cluster-bootstrap's GenerateBootstrapToken, crypto/rand).
	Now      func() time.Time
	NewToken func() (string, error)
}

// Validate checks the Issuer's configuration, naming the bad field.
func (i *Issuer) Validate() error {
	switch {
	case i.Client == nil:
		return errors.New("kube: Issuer.Client is required")
	case i.CACert == nil:
		return errors.New("kube: Issuer.CACert is required")
	case i.APIServerEndpoint == "":
		return errors.New("kube: Issuer.APIServerEndpoint is required (host:port)")
	case i.TTL < 0 || i.TTL > MaxTTL:
		return fmt.Errorf("kube: Issuer.TTL %s: want 0 (default %s) up to %s", i.TTL, DefaultTTL, MaxTTL)
	}
	return nil
}

// Issue creates a bootstrap token for nodeID, after deleting any earlier
// token of that node (one live token per node), and returns it with the CA
// pin and, when controlPlane, the certificate key.
func (i *Issuer) Issue(ctx context.Context, nodeID string, controlPlane bool) (*api.KubeJoin, error) {
	if err := i.Validate(); err != nil {
		return nil, err
	}
	if err := checkNodeID(nodeID); err != nil {
		return nil, err
	}
	var certKey string
	if controlPlane {
		if i.CertificateKeys == nil {
			return nil, ErrNoControlPlane
		}
		k, err := i.CertificateKeys.CertificateKey(ctx)
		if err != nil {
			return nil, fmt.Errorf("kube: certificate key for node %s: %w", nodeID, err)
		}
		certKey = k
	}
	if _, err := i.deleteTokens(ctx, nodeSelector(nodeID), "replaced"); err != nil {
		return nil, err
	}
	ttl := i.TTL
	if ttl == 0 {
		ttl = DefaultTTL
	}
	// The Secret's expiration has a resolution of one second (RFC 3339);
	// round down so the token never outlives what the node was told.
	expires := i.now().Add(ttl).UTC().Truncate(time.Second)
	var (
		tok *bootstraptokenv1.BootstrapTokenString
		err error
	)
	// A fresh ID collides with an existing token once in 36^6 draws per
	// live token; one more draw settles it.
	for attempt := 0; attempt < 3; attempt++ {
		tok, err = i.create(ctx, nodeID, controlPlane, expires)
		if !apierrors.IsAlreadyExists(err) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	i.log().Info("kube: bootstrap token created", "node", nodeID, "token_id", tok.ID,
		"control_plane", controlPlane, "expires", expires)
	return &api.KubeJoin{
		APIServerEndpoint: i.APIServerEndpoint,
		Token:             tok.String(),
		CACertHashes:      []string{pubkeypin.Hash(i.CACert)},
		CertificateKey:    certKey,
		Expires:           expires,
	}, nil
}

func (i *Issuer) create(ctx context.Context, nodeID string, controlPlane bool, expires time.Time) (*bootstraptokenv1.BootstrapTokenString, error) {
	newToken := i.NewToken
	if newToken == nil {
		newToken = bootstraputil.GenerateBootstrapToken
	}
	s, err := newToken()
	if err != nil {
		return nil, fmt.Errorf("kube: generate token: %w", err)
	}
	tok, err := bootstraptokenv1.NewBootstrapTokenString(s)
	if err != nil {
		return nil, fmt.Errorf("kube: generated token: %w", err)
	}
	bt := &bootstraptokenv1.BootstrapToken{
		Token:       tok,
		Description: "palisade: kubeadm join of attested node " + nodeID,
		Expires:     &metav1.Time{Time: expires},
		Usages:      Usages,
		Groups:      []string{JoinGroup},
	}
	// kubeadm's own encoding of a token as a Secret (the same keys
	// `kubeadm token create` writes).
	secret := bootstraptokenv1.BootstrapTokenToSecret(bt)
	secret.Labels = map[string]string{
		LabelNode:      nodeID,
		LabelManagedBy: managedBy,
	}
	if controlPlane {
		secret.Labels[LabelControlPlane] = "true"
	}
	if _, err := i.Client.CoreV1().Secrets(metav1.NamespaceSystem).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("kube: create bootstrap token Secret for node %s: %w", nodeID, err)
	}
	return tok, nil
}

// Revoke deletes every token issued to nodeID at once. If one of them was a
// control-plane token, the certificate key is rotated too, so the key the
// node was given stops opening kubeadm-certs at the next control-plane join.
func (i *Issuer) Revoke(ctx context.Context, nodeID string) error {
	if err := checkNodeID(nodeID); err != nil {
		return err
	}
	deleted, err := i.deleteTokens(ctx, nodeSelector(nodeID), "revoked")
	if err != nil {
		return err
	}
	for _, s := range deleted {
		if s.Labels[LabelControlPlane] == "true" {
			if r, ok := i.CertificateKeys.(rotator); ok {
				r.Rotate()
				i.log().Info("kube: certificate key rotated", "node", nodeID, "reason", "revoked")
			}
			break
		}
	}
	return nil
}

// Sweep deletes this issuer's tokens that expired or were used: a token is
// used once the kubelet's TLS bootstrap CSR it authenticated has its
// certificate, the last step of a join that needs the token. It does not
// rely on kube-controller-manager's tokencleaner. It returns how many
// tokens it deleted.
func (i *Issuer) Sweep(ctx context.Context) (int, error) {
	secrets, err := i.listTokens(ctx, managedSelector())
	if err != nil {
		return 0, err
	}
	if len(secrets) == 0 {
		return 0, nil
	}
	csrs, err := i.Client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, fmt.Errorf("kube: list CSRs: %w", err)
	}
	issued := map[string]bool{} // by bootstrap user name
	for _, c := range csrs.Items {
		if len(c.Status.Certificate) > 0 {
			issued[c.Spec.Username] = true
		}
	}
	now := i.now()
	n := 0
	for _, s := range secrets {
		id := string(s.Data[bootstrapapi.BootstrapTokenIDKey])
		reason := ""
		switch exp, err := time.Parse(time.RFC3339, string(s.Data[bootstrapapi.BootstrapTokenExpirationKey])); {
		case err != nil:
			// A managed token without a readable expiration would live
			// forever: it goes.
			reason = "no expiration"
		case !now.Before(exp):
			reason = "expired"
		case issued[bootstrapapi.BootstrapUserPrefix+id]:
			reason = "used"
		}
		if reason == "" {
			continue
		}
		if err := i.delete(ctx, s, reason); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// Run sweeps every interval until ctx ends; errors are logged, not fatal
// (the next sweep retries, and tokens expire on their own regardless).
func (i *Issuer) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := i.Sweep(ctx); err != nil && ctx.Err() == nil {
			i.log().Warn("kube: sweep", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (i *Issuer) deleteTokens(ctx context.Context, sel labels.Selector, reason string) ([]corev1.Secret, error) {
	secrets, err := i.listTokens(ctx, sel)
	if err != nil {
		return nil, err
	}
	for _, s := range secrets {
		if err := i.delete(ctx, s, reason); err != nil {
			return nil, err
		}
	}
	return secrets, nil
}

func (i *Issuer) listTokens(ctx context.Context, sel labels.Selector) ([]corev1.Secret, error) {
	l, err := i.Client.CoreV1().Secrets(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{
		LabelSelector: sel.String(),
		FieldSelector: "type=" + string(bootstrapapi.SecretTypeBootstrapToken),
	})
	if err != nil {
		return nil, fmt.Errorf("kube: list bootstrap tokens (%s): %w", sel, err)
	}
	return l.Items, nil
}

func (i *Issuer) delete(ctx context.Context, s corev1.Secret, reason string) error {
	// Preconditioned on the UID: a token recreated under the same name in
	// between is not ours to delete.
	uid := s.UID
	err := i.Client.CoreV1().Secrets(metav1.NamespaceSystem).Delete(ctx, s.Name, metav1.DeleteOptions{
		Preconditions: &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("kube: delete bootstrap token Secret %s: %w", s.Name, err)
	}
	i.log().Info("kube: bootstrap token deleted", "node", s.Labels[LabelNode],
		"token_id", string(s.Data[bootstrapapi.BootstrapTokenIDKey]), "reason", reason)
	return nil
}

func nodeSelector(nodeID string) labels.Selector {
	return labels.SelectorFromSet(labels.Set{LabelManagedBy: managedBy, LabelNode: nodeID})
}

func managedSelector() labels.Selector {
	return labels.SelectorFromSet(labels.Set{LabelManagedBy: managedBy})
}

// checkNodeID: keyd's node IDs are DNS-label-like (keyd/api), which is what
// a label value allows; anything else would either fail at the API server
// or, worse, select other nodes' tokens.
func checkNodeID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: empty", ErrNodeID)
	}
	if errs := validation.IsValidLabelValue(id); len(errs) > 0 {
		return fmt.Errorf("%w %q: %s", ErrNodeID, id, errs[0])
	}
	return nil
}

func (i *Issuer) now() time.Time {
	if i.Now != nil {
		return i.Now()
	}
	return time.Now()
}

func (i *Issuer) log() *slog.Logger {
	if i.Log != nil {
		return i.Log
	}
	return slog.New(slog.DiscardHandler)
}
