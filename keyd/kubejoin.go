package keyd

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/palisade-cc/palisade/keyd/api"
)

// KubeIssuer hands out kubeadm join material (keyd/kube.Issuer in a keyd
// built with Kubernetes support): a node gets it only in its admission
// response, after its evidence verified, and the owner's revocation deletes
// it at once.
type KubeIssuer interface {
	Issue(ctx context.Context, nodeID string, controlPlane bool) (*api.KubeJoin, error)
	Revoke(ctx context.Context, nodeID string) error
}

// KubeConfig turns on kubeadm join material (docs/kubeadm.md).
type KubeConfig struct {
	// Kubeconfig is a kubeconfig with the right to manage bootstrap-token
	// Secrets in kube-system and to list CSRs (keyd's own identity).
	Kubeconfig string `json:"kubeconfig"`
	// APIServerEndpoint is the host:port nodes' kubeadm discovery dials.
	APIServerEndpoint string `json:"api_server_endpoint"`
	// CACert is the cluster CA certificate (PEM) nodes pin by hash.
	CACert string `json:"ca_cert"`
	// TokenTTL bounds each node's bootstrap token (default 10m, at most 1h).
	TokenTTL Duration `json:"token_ttl,omitempty"`
	// ControlPlaneProfiles are the verified profiles whose nodes join as
	// control-plane nodes (they also get kubeadm-certs' key).
	ControlPlaneProfiles []string `json:"control_plane_profiles,omitempty"`
	// CertificatesDir is the cluster PKI (control-plane joins; default
	// /etc/kubernetes/pki).
	CertificatesDir string `json:"certificates_dir,omitempty"`
}

// Validate names the first bad field.
func (c *KubeConfig) Validate() error {
	switch {
	case c.Kubeconfig == "":
		return fmt.Errorf("config.kube.kubeconfig: empty, want a kubeconfig file")
	case c.CACert == "":
		return fmt.Errorf("config.kube.ca_cert: empty, want the cluster CA's PEM file")
	case c.TokenTTL < 0 || time.Duration(c.TokenTTL) > time.Hour:
		return fmt.Errorf("config.kube.token_ttl %s: want at most 1h", time.Duration(c.TokenTTL))
	}
	if _, _, err := net.SplitHostPort(c.APIServerEndpoint); err != nil {
		return fmt.Errorf("config.kube.api_server_endpoint %q: want host:port", c.APIServerEndpoint)
	}
	return nil
}

// NewKubeIssuer builds the KubeIssuer from the config; set by a keyd built
// with Kubernetes support (keyd/cmd/keyd, build tag kube), so the measured
// image's keyd does not carry client-go and kubeadm (+23 MB) it cannot use.
var NewKubeIssuer func(ctx context.Context, c *KubeConfig, log *slog.Logger) (KubeIssuer, error)

// kubeJoin issues the admitted node's join material. A failure is logged
// and the admission still succeeds without it: disks must unlock and the
// mesh must form even while the API server is down (a control plane
// cannot come back otherwise); the node asks again at its next admission.
func (k *Keyd) kubeJoin(ctx context.Context, nodeID, profile string) *api.KubeJoin {
	if k.kube == nil {
		return nil
	}
	var cp []string
	if k.cfg.Kube != nil {
		cp = k.cfg.Kube.ControlPlaneProfiles
	}
	j, err := k.kube.Issue(ctx, nodeID, slices.Contains(cp, profile))
	if err != nil {
		k.logger.Error("kubeadm join material not issued; admitted without it", "node", nodeID, "err", err)
		k.m.kubeIssue.WithLabelValues("error").Inc()
		return nil
	}
	k.m.kubeIssue.WithLabelValues("ok").Inc()
	return j
}

// kubeRevoke deletes revoked nodes' tokens. A failure is logged: the tokens
// expire within their TTL regardless, and the sweep retries deletion.
func (k *Keyd) kubeRevoke(ctx context.Context, ids []string) {
	if k.kube == nil {
		return
	}
	for _, id := range ids {
		if err := k.kube.Revoke(ctx, id); err != nil {
			k.logger.Error("revoked node's bootstrap token not deleted (it expires within its TTL)", "node", id, "err", err)
		}
	}
}
