package meshd

import (
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	good := func() Config { c := Config{Version: 1}; c.SetDefaults(); return c }
	if c := good(); c.Validate() != nil {
		t.Fatalf("defaults: %v", c.Validate())
	}
	for field, mut := range map[string]func(*Config){
		"config.version":                      func(c *Config) { c.Version = 2 },
		"config.interface":                    func(c *Config) { c.Interface = "a-very-long-ifname" },
		"config.listen_port":                  func(c *Config) { c.ListenPort = 70000 },
		"config.mtu":                          func(c *Config) { c.MTU = 1000 },
		"config.persistent_keepalive_seconds": func(c *Config) { c.PersistentKeepaliveSeconds = -1 },
		"config.mesh_ipv4_bits":               func(c *Config) { c.MeshIPv4Bits = 31 },
		"config.poll_wait_seconds":            func(c *Config) { c.PollWaitSeconds = 61 },
		"config.status_listen":                func(c *Config) { c.StatusListen = "0.0.0.0:9474" },
	} {
		c := good()
		mut(&c)
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), field+" ") {
			t.Errorf("%s: got %v, want an error naming it", field, err)
		}
	}
}

func TestSelfAddresses(t *testing.T) {
	got, err := Self{MeshAddress: "fd12:3456:789a::42", MeshIPv4: "10.20.0.5"}.Addresses(16)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].String() != "fd12:3456:789a::42/64" || got[1].String() != "10.20.0.5/16" {
		t.Errorf("addresses %v", got)
	}
	for _, s := range []Self{{MeshAddress: "10.0.0.1"}, {MeshAddress: "fd00::1", MeshIPv4: "fd00::2"}, {MeshAddress: "fd00::1%eth0"}} {
		if _, err := s.Addresses(16); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
}
