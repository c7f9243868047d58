//go:build kube

package main

// A keyd built with -tags kube issues kubeadm join material (keyd/kube):
// the measured image's keyd is built without it, since client-go and
// kubeadm add 23 MB it has no API server to use.

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/palisade-cc/palisade/keyd"
	"github.com/palisade-cc/palisade/keyd/kube"
)

func init() { keyd.NewKubeIssuer = newKubeIssuer }

func newKubeIssuer(ctx context.Context, c *keyd.KubeConfig, log *slog.Logger) (keyd.KubeIssuer, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", c.Kubeconfig, err)
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", c.Kubeconfig, err)
	}
	b, err := os.ReadFile(c.CACert)
	if err != nil {
		return nil, fmt.Errorf("ca_cert: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("ca_cert %s: no PEM CERTIFICATE", c.CACert)
	}
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca_cert %s: %w", c.CACert, err)
	}
	iss := &kube.Issuer{Client: cs, APIServerEndpoint: c.APIServerEndpoint, CACert: ca, TTL: time.Duration(c.TokenTTL), Log: log}
	if len(c.ControlPlaneProfiles) > 0 {
		iss.CertificateKeys = &kube.CertUploader{Client: cs, CertificatesDir: c.CertificatesDir}
	}
	if err := iss.Validate(); err != nil {
		return nil, err
	}
	if err := iss.Setup(ctx); err != nil {
		return nil, fmt.Errorf("kube setup (cluster-info, bootstrappers' RBAC): %w", err)
	}
	go iss.Run(ctx, 30*time.Second)
	return iss, nil
}
