package boot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

type fakeProc struct {
	err   error
	block <-chan struct{}
}

func (p fakeProc) Wait() error {
	if p.block != nil {
		<-p.block
		return errors.New("killed")
	}
	return p.err
}

// fakeSys records what the boot sequence asked for, in order.
type fakeSys struct {
	calls   []string
	cmdline string
	dhcp    []byte
	files   map[string][]byte
	present map[string]bool
	exit    map[string]error
	modErr  error
	netErr  error
}

func (f *fakeSys) Mount(m Mount) error { f.calls = append(f.calls, "mount "+m.Target); return nil }
func (f *fakeSys) LoadModule(n string) error {
	f.calls = append(f.calls, "modprobe "+n)
	return f.modErr
}
func (f *fakeSys) Network(context.Context, NetworkConfig) ([]byte, error) {
	f.calls = append(f.calls, "dhcp")
	return f.dhcp, f.netErr
}
func (f *fakeSys) Cmdline() (string, error) { return f.cmdline, nil }
func (f *fakeSys) WriteFile(p string, b []byte) error {
	if f.files == nil {
		f.files = map[string][]byte{}
	}
	f.files[p] = b
	return nil
}
func (f *fakeSys) Stat(p string) error {
	if f.present[p] {
		return nil
	}
	return fmt.Errorf("stat %s: %w", p, fs.ErrNotExist)
}
func (f *fakeSys) Start(ctx context.Context, s Stage, env []string) (Process, error) {
	f.calls = append(f.calls, "start "+s.Name)
	if err, ok := f.exit[s.Name]; ok || s.Mode == ModeOneshot {
		return fakeProc{err: err}, nil
	}
	return fakeProc{block: ctx.Done()}, nil // a daemon that keeps running
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func allPresent(c *Config) map[string]bool {
	m := map[string]bool{}
	for _, s := range c.Stages {
		m[s.Path] = true
	}
	return m
}

func TestRunOrder(t *testing.T) {
	c := Default(ProfileProduction)
	c.Modules = []string{"virtio_net", "dm_crypt"}
	f := &fakeSys{
		cmdline: "console=ttyS0 palisade.keyd=10.0.0.2:7443 palisade.cluster=c1",
		dhcp:    []byte("keyd=10.0.0.3:7443,10.0.0.2:7443 cluster=other"),
		present: allPresent(c),
		exit:    map[string]error{"meshd": errors.New("exit status 1")},
	}
	err := Run(context.Background(), quiet(), c, f)
	if err == nil || !strings.Contains(err.Error(), "stage meshd exited") {
		t.Fatalf("Run = %v, want meshd exit reported", err)
	}
	want := []string{"mount /proc", "mount /sys", "mount /dev", "mount /run", "mount /sys/kernel/security",
		"mount /sys/kernel/config", "modprobe virtio_net", "modprobe dm_crypt", "dhcp",
		"start attestd", "start meshd", "start workload"}
	if d := cmp.Diff(want, f.calls); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}
	var h Hints
	if err := json.Unmarshal(f.files[c.HintsPath], &h); err != nil {
		t.Fatal(err)
	}
	wantH := Hints{Keyd: []string{"10.0.0.2:7443", "10.0.0.3:7443"}, Cluster: "c1",
		Sources: []string{"cmdline:keyd", "cmdline:cluster", "dhcp:keyd", "dhcp:cluster"}}
	if d := cmp.Diff(wantH, h); d != "" {
		t.Errorf("hints (-want +got):\n%s", d)
	}
}

func TestRunMissingStage(t *testing.T) {
	c := Default(ProfileProduction)
	p := allPresent(c)
	delete(p, "/bin/meshd")
	f := &fakeSys{present: p}
	err := Run(context.Background(), quiet(), c, f)
	if !errors.Is(err, ErrStageMissing) || !strings.Contains(err.Error(), "stage meshd: /bin/meshd") {
		t.Fatalf("Run = %v, want meshd reported missing", err)
	}
	for _, call := range f.calls {
		if strings.HasPrefix(call, "start") {
			t.Errorf("%s ran although a later stage is missing", call)
		}
	}
}

func TestRunOneshotFailureStops(t *testing.T) {
	c := Default(ProfileProduction)
	f := &fakeSys{present: allPresent(c), exit: map[string]error{"attestd": errors.New("exit status 2")}}
	err := Run(context.Background(), quiet(), c, f)
	if err == nil || !strings.Contains(err.Error(), "stage attestd: exit status 2") {
		t.Fatalf("Run = %v", err)
	}
	if d := cmp.Diff("start attestd", f.calls[len(f.calls)-1]); d != "" {
		t.Errorf("last call: %s", d)
	}
}

func TestRunModuleAndNetworkErrors(t *testing.T) {
	c := Default(ProfileProduction)
	f := &fakeSys{present: allPresent(c), modErr: errors.New("no such module")}
	if err := Run(context.Background(), quiet(), c, f); err == nil || !strings.Contains(err.Error(), "load module virtio_pci") {
		t.Errorf("module error: %v", err)
	}
	f = &fakeSys{present: allPresent(c), netErr: errors.New("no lease")}
	if err := Run(context.Background(), quiet(), c, f); err == nil || !strings.Contains(err.Error(), "network: no lease") {
		t.Errorf("network error: %v", err)
	}
	// A malformed DHCP hint is ignored, the boot goes on.
	f = &fakeSys{present: allPresent(c), dhcp: []byte("keyd=nonsense"), exit: map[string]error{"meshd": nil}}
	if err := Run(context.Background(), quiet(), c, f); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("bad dhcp hint: %v", err)
	}
}

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
		{"dup stage", func(c *Config) { c.Stages = append(c.Stages, c.Stages[0]) }, "stages[3].name"},
		{"relative", func(c *Config) { c.Stages[1].Path = "meshd" }, "stages[1].path"},
		{"mode", func(c *Config) { c.Stages[0].Mode = "forever" }, "stages[0].mode"},
		{"timeout", func(c *Config) { c.Network.Timeout = 0 }, "network.timeout"},
		{"retries", func(c *Config) { c.Network.Retries = 0 }, "network.retries"},
		{"key", func(c *Config) { c.ManifestKey = "" }, "manifest_key"},
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
	for _, p := range []string{ProfileProduction, ProfileDebug} {
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
