package api

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"version", func(c *Config) { c.Version = 2 }, "version"},
		{"profile", func(c *Config) { c.Profile = "dev" }, "profile"},
		{"shell in production", func(c *Config) { c.Shell = "/bin/gosh" }, "shell"},
		{"module", func(c *Config) { c.Modules = []string{"../x"} }, "modules[0]"},
		{"no stages", func(c *Config) { c.Stages = nil }, "stages"},
		{"dup stage", func(c *Config) { c.Stages = append(c.Stages, c.Stages[0]) }, "stages[4].name"},
		{"relative", func(c *Config) { c.Stages[1].Path = "meshd" }, "stages[1].path"},
		{"mode", func(c *Config) { c.Stages[0].Mode = "forever" }, "stages[0].mode"},
		{"timeout", func(c *Config) { c.Network.Timeout = 0 }, "network.timeout"},
		{"retries", func(c *Config) { c.Network.Retries = 0 }, "network.retries"},
		{"key", func(c *Config) { c.ManifestKey = "" }, "manifest_key"},
		{"rekor key", func(c *Config) { c.RekorKey = "rekor.pub" }, "rekor_key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Default(ProfileProduction)
			tc.edit(c)
			err := c.Validate()
			if err == nil || !strings.HasPrefix(err.Error(), tc.field) {
				t.Errorf("Validate = %v, want an error naming %s", err, tc.field)
			}
		})
	}
	cp := Default(ProfileControlPlane)
	if cp.Shell != "" || cp.Stages[0].Name != "keyd" || cp.Stages[0].Mode != ModeDaemon || cp.Stages[1].Name != "attestd" {
		t.Errorf("control-plane stages %+v shell %q: want keyd (daemon) before attestd, no shell", cp.Stages, cp.Shell)
	}
	cp.Shell = "/bin/gosh"
	if err := cp.Validate(); err == nil || !strings.HasPrefix(err.Error(), "shell") {
		t.Errorf("control-plane with a shell: Validate = %v, want an error naming shell", err)
	}
	for _, p := range []string{ProfileProduction, ProfileDebug, ProfileControlPlane} {
		b, err := json.Marshal(Default(p))
		if err != nil {
			t.Fatal(err)
		}
		c, err := ParseConfig(b)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if d := cmp.Diff(Default(p), c); d != "" {
			t.Errorf("%s round trip (-want +got):\n%s", p, d)
		}
	}
	if _, err := ParseConfig([]byte(`{"version":1,"bogus":true}`)); err == nil {
		t.Error("unknown field accepted")
	}
}

func TestHints(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Hints
		wantErr string
	}{
		{in: "palisade.keyd=[fd00::1]:7443", want: Hints{Keyd: []string{"[fd00::1]:7443"}, Sources: []string{"cmdline:keyd"}}},
		{in: "quiet palisade.other=1 root=/dev/x", want: Hints{}},
		{in: "palisade.keyd=host", wantErr: "missing port"},
		{in: "palisade.keyd=:7443", wantErr: "empty host"},
		{in: "palisade.keyd=h:0", wantErr: "port out of"},
		{in: "palisade.cluster=a/b", wantErr: "cluster"},
		{in: "palisade.keyd=" + strings.Repeat("h:1,", MaxHints) + "h:1", wantErr: "more than"},
	} {
		got, err := ParseCmdline(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseCmdline(%q) = %v, want error with %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseCmdline(%q): %v", tc.in, err)
		}
		if d := cmp.Diff(tc.want, got); d != "" {
			t.Errorf("ParseCmdline(%q) (-want +got):\n%s", tc.in, d)
		}
	}
	if _, err := ParseDHCPOption([]byte("keyd")); err == nil {
		t.Error("dhcp hint without = accepted")
	}
}

func FuzzHints(f *testing.F) {
	f.Add([]byte("keyd=10.0.0.2:7443,[::1]:1 cluster=c1"))
	f.Add([]byte("keyd= cluster="))
	f.Add([]byte("x=y keyd=a:b"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseDHCPOption(b)
		if err != nil {
			return
		}
		if len(h.Keyd) > MaxHints {
			t.Fatalf("%d keyd hints", len(h.Keyd))
		}
		for _, a := range h.Keyd {
			if err := checkHostPort(a); err != nil {
				t.Fatalf("accepted %q: %v", a, err)
			}
		}
		_, _ = ParseCmdline(string(b))
	})
}

func FuzzConfig(f *testing.F) {
	b, _ := json.Marshal(Default(ProfileDebug))
	f.Add(b)
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err == nil && c.Validate() != nil {
			t.Fatal("ParseConfig returned an invalid config")
		}
	})
}
