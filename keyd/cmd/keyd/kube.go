//go:build kube

package main

// A keyd built with -tags kube issues kubeadm join material (keyd/kube):
// the measured image's keyd is built without it, since client-go and
// kubeadm add 23 MB it has no API server to use.

import (
	"context"
	"log/slog"
	"time"

	"github.com/palisade-cc/palisade/keyd"
	"github.com/palisade-cc/palisade/keyd/kube"
)

func init() { keyd.NewKubeIssuer = newKubeIssuer }

func newKubeIssuer(ctx context.Context, c *keyd.KubeConfig, log *slog.Logger) (keyd.KubeIssuer, error) {
	iss, err := kube.FromFiles(ctx, kube.Files{Kubeconfig: c.Kubeconfig, CACert: c.CACert, APIServerEndpoint: c.APIServerEndpoint,
		TTL: time.Duration(c.TokenTTL), ControlPlane: len(c.ControlPlaneProfiles) > 0, CertificatesDir: c.CertificatesDir}, log)
	if err != nil {
		return nil, err
	}
	go iss.Run(ctx, 30*time.Second)
	return iss, nil
}
