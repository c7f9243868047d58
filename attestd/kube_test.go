package attestd

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/palisade-cc/palisade/keyd/api"
)

type oneToken struct{}

func (oneToken) Issue(context.Context, string, bool) (*api.KubeJoin, error) {
	return &api.KubeJoin{APIServerEndpoint: "10.0.0.1:6443", Token: "abcdef.0123456789abcdef",
		CACertHashes: []string{"sha256:" + strings.Repeat("cd", 32)}, Expires: time.Now().Add(10 * time.Minute)}, nil
}
func (oneToken) Revoke(context.Context, string) error { return nil }

// TestJoinKubeMaterial: keyd's join material lands in RunDir/kube-join.json,
// mode 0600, and nowhere else the node writes or prints.
func TestJoinKubeMaterial(t *testing.T) {
	w := newWorld(t, worldOpts{kube: oneToken{}})
	m, _ := w.snpNode()
	adm, err := w.run(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	if adm.Kube == nil {
		t.Fatal("admission carries no join material")
	}
	p := filepath.Join(w.cfg.RunDir, KubeJoinFile)
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v, want mode 0600", p, fi, err)
	}
	b, _ := os.ReadFile(p)
	var j api.KubeJoin
	if err := json.Unmarshal(b, &j); err != nil || j.Token != "abcdef.0123456789abcdef" {
		t.Fatalf("kube-join.json %s: %v", b, err)
	}
	rec, _ := os.ReadFile(filepath.Join(w.cfg.RunDir, "admission.json"))
	if strings.Contains(string(rec), "0123456789abcdef") || w.consoleHas("0123456789abcdef") {
		t.Error("the bootstrap token's secret is in admission.json or on the console")
	}
}
