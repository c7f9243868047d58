package keyd

import (
	"encoding/json"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest/snp/snptest"
)

func FuzzParseManifest(f *testing.F) {
	c, err := snptest.NewChain(snptest.ChainOptions{})
	if err != nil {
		f.Fatal(err)
	}
	ref := c.Reference()
	ref.Profile = "p"
	good, _ := json.Marshal(Manifest{Format: 1, Version: 2, References: []RoleReference{{"node", ref}}})
	f.Add(good)
	f.Add([]byte(`{"format":1,"security_version":1,"references":[]}`))
	f.Add([]byte(`{"format":1,"security_version":1,"references":[{"role":"node","reference":null}]}`))
	f.Add([]byte(`{}{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		for _, rr := range m.References {
			if _, err := m.Lookup(rr.Role, rr.Reference.Profile); err != nil {
				t.Fatalf("parsed reference not found: %v", err)
			}
		}
		if m.SecurityVersion() == 0 {
			t.Fatal("security version 0 accepted")
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	good, _ := json.Marshal(testConfig())
	f.Add(good)
	f.Add([]byte(`{"version":1,"limits":{"handshake_timeout":"-1s"}}`))
	f.Add([]byte(`{"version":1,"roots":{"sev_snp":{"Rome":{}}}}`))
	etcdCfg := testConfig()
	etcdCfg.StatePath, etcdCfg.Store = "", StoreConfig{Kind: StoreEtcd, Endpoints: []string{"http://127.0.0.1:2379"}, Prefix: "/p"}
	withEtcd, _ := json.Marshal(etcdCfg)
	f.Add(withEtcd)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err == nil && c.Validate() != nil {
			t.Fatal("ParseConfig returned an invalid config")
		}
	})
}
