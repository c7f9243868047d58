package kube

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FromFiles fails before any API call, naming the file, on a missing
// kubeconfig, a CA file that is not a PEM certificate, or a bad endpoint.
func TestFromFilesRefused(t *testing.T) {
	dir := t.TempDir()
	kc := filepath.Join(dir, "keyd.conf")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		f    Files
		want string
	}{
		"no kubeconfig": {Files{Kubeconfig: filepath.Join(dir, "absent.conf"), CACert: notPEM, APIServerEndpoint: "127.0.0.1:6443"}, "kubeconfig"},
		"no CA file":    {Files{Kubeconfig: kc, CACert: filepath.Join(dir, "absent.crt"), APIServerEndpoint: "127.0.0.1:6443"}, "ca_cert"},
		"CA not PEM":    {Files{Kubeconfig: kc, CACert: notPEM, APIServerEndpoint: "127.0.0.1:6443"}, "no PEM CERTIFICATE"},
	} {
		_, err := FromFiles(context.Background(), c.f, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", name, err, c.want)
		}
	}
}
