package keyd

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/palisade-cc/palisade/keyd/store/etcd/etcdtest"
)

func TestConfigStore(t *testing.T) {
	for _, c := range []struct {
		name      string
		statePath string
		store     StoreConfig
		wantErr   string // substring; "" means valid
	}{
		{"bbolt default", "/var/lib/keyd/state.db", StoreConfig{}, ""},
		{"bbolt explicit", "/var/lib/keyd/state.db", StoreConfig{Kind: StoreBbolt}, ""},
		{"bbolt without path", "", StoreConfig{}, "config.state_path"},
		{"bbolt with endpoints", "/s.db", StoreConfig{Endpoints: []string{"http://127.0.0.1:2379"}}, "config.store"},
		{"etcd", "", StoreConfig{Kind: StoreEtcd, Endpoints: []string{"http://127.0.0.1:2379", "https://etcd-1:2379"}, Prefix: "/p/keyd"}, ""},
		{"etcd default prefix", "", StoreConfig{Kind: StoreEtcd, Endpoints: []string{"http://127.0.0.1:2379"}}, ""},
		{"etcd and state path", "/s.db", StoreConfig{Kind: StoreEtcd, Endpoints: []string{"http://127.0.0.1:2379"}}, "config.state_path"},
		{"etcd without endpoints", "", StoreConfig{Kind: StoreEtcd}, "config.store.endpoints"},
		{"etcd bare host", "", StoreConfig{Kind: StoreEtcd, Endpoints: []string{"127.0.0.1:2379"}}, "config.store.endpoints[0]"},
		{"etcd prefix without slash", "", StoreConfig{Kind: StoreEtcd, Endpoints: []string{"http://e:2379"}, Prefix: "keyd"}, "config.store.prefix"},
		{"etcd prefix trailing slash", "", StoreConfig{Kind: StoreEtcd, Endpoints: []string{"http://e:2379"}, Prefix: "/keyd/"}, "config.store.prefix"},
		{"unknown kind", "/s.db", StoreConfig{Kind: "sqlite"}, "config.store.kind"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.StatePath, cfg.Store = c.statePath, c.store
			err := cfg.Validate()
			switch {
			case c.wantErr == "" && err != nil:
				t.Errorf("Validate: %v, want valid", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Errorf("Validate: %v, want an error naming %s", err, c.wantErr)
			}
		})
	}
	if got := (StoreConfig{}).prefix("c1"); got != "/palisade/keyd/c1" {
		t.Errorf("default prefix %q", got)
	}
}

// TestAdmitEtcd: two keyd replicas whose state is one etcd cluster (a real
// etcd on loopback, opened as Run opens it from the config): a node
// admitted by the first is in the registry the second serves, with the
// same log.
func TestAdmitEtcd(t *testing.T) {
	srv, err := etcdtest.Start(t.TempDir())
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("keyd's etcd test needs a real etcd server: %v", err)
		}
		t.Skipf("SKIP: no etcd server (CI=true makes this a failure): %v", err)
	}
	t.Cleanup(srv.Stop)
	ctx := ctxT(t)
	cfg := testConfig()
	cfg.StatePath, cfg.Store = "", StoreConfig{Kind: StoreEtcd, Endpoints: srv.Endpoints}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	open := func(noInit bool) *harness {
		st, err := openStore(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return newHarness(t, harnessOpts{store: st, noInit: noInit})
	}
	a := open(false)
	disks := []string{testDiskA}
	resp, err := a.node("node-etcd", disks, nil).Admit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.checkAdmission(ctx, "node-etcd", disks, resp)

	b := open(true) // a second replica on the same etcd prefix
	nodes, err := b.ownerClient().Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Nodes) != 1 || nodes.Nodes[0].NodeID != "node-etcd" || nodes.Nodes[0].LogIndex != resp.LogIndex {
		t.Errorf("second replica's registry: %+v", nodes.Nodes)
	}
	cp, err := b.ownerClient().Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(cp) != string(resp.Checkpoint) {
		t.Errorf("second replica's checkpoint differs from the one the node got:\n%s\n%s", cp, resp.Checkpoint)
	}
}
