package boot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/internal/modalias"
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
	env     map[string][]string
	devices []string            // modaliases present
	aliases map[string][]string // nil: testAliases
}

// testAliases are real aliases of the default device modules (Debian's
// 6.1 kernel), one or two per module.
const testAliases = `# Aliases extracted from modules themselves.
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v00008086d00001533sv*sd*bc*sc*i* igb
alias pci:v00008086d000015F3sv*sd*bc*sc*i* igc
alias pci:v00008086d000010FBsv*sd*bc*sc*i* ixgbe
alias pci:v00008086d00001572sv*sd*bc*sc*i* i40e
alias pci:v00008086d00001592sv*sd*bc*sc*i* ice
alias pci:v000015B3d00001017sv*sd*bc*sc*i* mlx5_core
alias pci:v000014E4d000016D7sv*sd*bc*sc*i* bnxt_en
alias pci:v000014E4d00001657sv*sd*bc*sc*i* tg3
alias pci:v000010ECd00008168sv*sd*bc*sc*i* r8169
alias pci:v*d*sv*sd*bc01sc08i02* nvme
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias virtio:d00000001v* virtio_net
`

func (f *fakeSys) Mount(m Mount) error { f.calls = append(f.calls, "mount "+m.Target); return nil }
func (f *fakeSys) LoadModule(n string) error {
	f.calls = append(f.calls, "modprobe "+n)
	return f.modErr
}
func (f *fakeSys) Modaliases() ([]string, error) { return f.devices, nil }
func (f *fakeSys) ModuleAliases() (map[string][]string, error) {
	if f.aliases != nil {
		return f.aliases, nil
	}
	return modalias.Parse([]byte(testAliases))
}
func (f *fakeSys) Network(context.Context, api.NetworkConfig) ([]byte, error) {
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
func (f *fakeSys) Start(ctx context.Context, s api.Stage, env []string) (Process, error) {
	f.calls = append(f.calls, "start "+s.Name)
	if f.env == nil {
		f.env = map[string][]string{}
	}
	f.env[s.Name] = env
	if err, ok := f.exit[s.Name]; ok || s.Mode == api.ModeOneshot {
		return fakeProc{err: err}, nil
	}
	return fakeProc{block: ctx.Done()}, nil // a daemon that keeps running
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func allPresent(c *api.Config) map[string]bool {
	m := map[string]bool{}
	for _, s := range c.Stages {
		m[s.Path] = true
	}
	return m
}

func TestRunOrder(t *testing.T) {
	c := api.Default(api.ProfileProduction)
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
		"modprobe virtio_net", "modprobe dm_crypt", "mount /sys/kernel/config", "dhcp",
		"start attestd", "start attestd-serve", "start meshd", "start workload"}
	if d := cmp.Diff(want, f.calls); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}
	var h api.Hints
	if err := json.Unmarshal(f.files[c.HintsPath], &h); err != nil {
		t.Fatal(err)
	}
	wantH := api.Hints{Keyd: []string{"10.0.0.2:7443", "10.0.0.3:7443"}, Cluster: "c1",
		Sources: []string{"cmdline:keyd", "cmdline:cluster", "dhcp:keyd", "dhcp:cluster"}}
	if d := cmp.Diff(wantH, h); d != "" {
		t.Errorf("hints (-want +got):\n%s", d)
	}
}

func TestRunMissingStage(t *testing.T) {
	c := api.Default(api.ProfileProduction)
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
	c := api.Default(api.ProfileProduction)
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
	c := api.Default(api.ProfileProduction)
	f := &fakeSys{present: allPresent(c), modErr: errors.New("no such module")}
	if err := Run(context.Background(), quiet(), c, f); err == nil || !strings.Contains(err.Error(), "load module configfs") {
		t.Errorf("module error: %v", err)
	}
	// A module whose hardware is absent (ENODEV: sev_guest outside an
	// SEV-SNP guest) is skipped: one image boots every platform.
	f = &fakeSys{present: allPresent(c), modErr: fmt.Errorf("%w: sev_guest", ErrNoDevice), exit: map[string]error{"meshd": nil}}
	if err := Run(context.Background(), quiet(), c, f); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("absent hardware stopped the boot: %v", err)
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

// TestRunRekorKeyEnv: an image that pins a Rekor key hands its path to every
// stage; one that does not, hands none.
func TestRunRekorKeyEnv(t *testing.T) {
	for _, key := range []string{"", "/etc/palisade/rekor.pub"} {
		c := api.Default(api.ProfileProduction)
		c.Modules, c.Network.Disabled, c.RekorKey = nil, true, key
		f := &fakeSys{present: allPresent(c), exit: map[string]error{"meshd": errors.New("exit status 1")}}
		_ = Run(context.Background(), quiet(), c, f)
		for _, s := range c.Stages {
			has := slices.Contains(f.env[s.Name], "PALISADE_REKOR_KEY="+key)
			if has != (key != "") {
				t.Errorf("rekor key %q: stage %s env %v", key, s.Name, f.env[s.Name])
			}
		}
	}
}

func TestDeviceModules(t *testing.T) {
	c := api.Default(api.ProfileProduction)
	c.Modules = []string{"virtio_net"}
	f := &fakeSys{
		cmdline: "palisade.keyd=10.0.0.2:7443 palisade.cluster=c1",
		present: allPresent(c),
		exit:    map[string]error{"meshd": errors.New("exit status 1")},
		// QEMU's e1000e (82574L) and NVMe controller, a virtio NIC.
		devices: []string{
			"pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00",
			"pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",
			"virtio:d00000001v00001AF4",
		},
	}
	_ = Run(context.Background(), quiet(), c, f)
	want := []string{"mount /proc", "mount /sys", "mount /dev", "mount /run", "mount /sys/kernel/security",
		"modprobe virtio_net", "modprobe e1000e", "modprobe nvme", "mount /sys/kernel/config"}
	if len(f.calls) < len(want) {
		t.Fatalf("calls %q, want to start with %q", f.calls, want)
	}
	if d := cmp.Diff(want, f.calls[:len(want)]); d != "" {
		t.Errorf("calls (-want +got):\n%s", d)
	}

	// No device of theirs: none loaded.
	f = &fakeSys{present: allPresent(c), devices: []string{"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"}}
	if err := loadDeviceModules(quiet(), c.DeviceModules, f); err != nil || len(f.calls) != 0 {
		t.Errorf("loadDeviceModules = %v, calls %q; want none", err, f.calls)
	}

	// A configured driver the initramfs has no aliases for is a build
	// mistake, named at boot rather than a node that silently finds no NIC.
	f = &fakeSys{aliases: map[string][]string{"e1000e": {"pci:v00008086d000010D3sv*sd*bc*sc*i*"}}}
	err := loadDeviceModules(quiet(), []string{"e1000e", "igb"}, f)
	if err == nil || !strings.Contains(err.Error(), "device module igb") {
		t.Errorf("loadDeviceModules = %v, want igb named", err)
	}
	f = &fakeSys{modErr: errors.New("exec format error"), devices: []string{"pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"}}
	if err := loadDeviceModules(quiet(), []string{"e1000e"}, f); err == nil || !strings.Contains(err.Error(), "load module e1000e") {
		t.Errorf("loadDeviceModules = %v, want the load failure", err)
	}
}

func TestLinuxModaliases(t *testing.T) {
	root := t.TempDir()
	for dev, alias := range map[string]string{
		"sys/bus/pci/devices/0000:00:02.0": "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00\n",
		"sys/bus/virtio/devices/virtio0":   "virtio:d00000001v00001AF4\n",
		"sys/bus/platform/devices/x":       "",
	} {
		if err := os.MkdirAll(filepath.Join(root, dev), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, dev, "modalias"), []byte(alias), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := (&Linux{Root: root}).Modaliases()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	want := []string{"pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00", "virtio:d00000001v00001AF4"}
	if !slices.Equal(got, want) {
		t.Errorf("Modaliases = %q, want %q", got, want)
	}
}
