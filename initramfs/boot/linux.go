//go:build linux

package boot

import (
	"context"
	"errors"
	"fmt"
	"github.com/vishvananda/netlink"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/u-root/u-root/pkg/dhclient"
	"github.com/u-root/u-root/pkg/kmodule"
	"golang.org/x/sys/unix"

	"github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/internal/modalias"
)

// Linux is the System of a real boot: PID 1 in the initramfs.
type Linux struct {
	// Root prefixes every path (empty in production); kmodule reads
	// modules.dep under Root/lib/modules/<uname -r>.
	Root string
}

var _ System = (*Linux)(nil)

// Mount mounts m, creating its target; a target that already has this
// file system (the kernel may have mounted devtmpfs) is not an error.
func (l *Linux) Mount(m Mount) error {
	t := filepath.Join(l.Root, m.Target)
	if err := os.MkdirAll(t, 0o755); err != nil {
		return err
	}
	err := unix.Mount(m.Source, t, m.FSType, m.Flags, m.Data)
	if err == unix.EBUSY {
		return nil
	}
	return err
}

// LoadModule loads name and its dependencies with finit_module(2); a module
// built into the kernel counts as loaded (kmodule reads modules.builtin).
func (l *Linux) LoadModule(name string) error {
	err := kmodule.ProbeOptions(name, "", kmodule.ProbeOpts{RootDir: l.Root})
	if errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("%w: %w", ErrNoDevice, err)
	}
	return err
}

// Modaliases reads /sys/bus/*/devices/*/modalias. A device without one
// (no driver could match it) is left out.
func (l *Linux) Modaliases() ([]string, error) {
	files, err := filepath.Glob(filepath.Join(l.Root, "/sys/bus/*/devices/*/modalias"))
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(files))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue // the device went away
		} else if err != nil {
			return nil, fmt.Errorf("modalias: %w", err)
		}
		if a := strings.TrimSpace(string(b)); a != "" {
			out = append(out, a)
		}
	}
	return out, nil
}

// ModuleAliases reads Root/lib/modules/<uname -r>/modules.alias.
func (l *Linux) ModuleAliases() (map[string][]string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return nil, fmt.Errorf("uname: %w", err)
	}
	p := filepath.Join(l.Root, "/lib/modules", unix.ByteSliceToString(u.Release[:]), "modules.alias")
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	return modalias.Parse(b)
}

// Network runs DHCPv4 on the configured interfaces and configures every
// interface that got a lease.
func (l *Linux) Network(ctx context.Context, c api.NetworkConfig) ([]byte, error) {
	all, err := dhclient.Interfaces(c.Interfaces)
	if err != nil {
		return nil, err
	}
	// Loopback is brought up, never asked for a lease: DHCP on lo waits
	// out every retry (found by the first QEMU boots: 105 s lost).
	var ifs []netlink.Link
	for _, l := range all {
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			if err := netlink.LinkSetUp(l); err != nil {
				return nil, fmt.Errorf("bring up %s: %w", l.Attrs().Name, err)
			}
			continue
		}
		ifs = append(ifs, l)
	}
	if len(ifs) == 0 {
		return nil, fmt.Errorf("no network interface besides loopback matches %q", c.Interfaces)
	}
	req := dhcpv4.WithRequestedOptions(dhcpv4.GenericOptionCode(api.DHCPOptionHints))
	cfg := dhclient.Config{
		Timeout:    time.Duration(c.Timeout),
		Retries:    c.Retries,
		Modifiers4: []dhcpv4.Modifier{req},
	}
	var hint []byte
	leases := 0
	for r := range dhclient.SendRequests(ctx, ifs, true, false, cfg, 30*time.Second) {
		if r.Err != nil {
			fmt.Fprintf(os.Stderr, "init: dhcp on %s: %v\n", r.Interface.Attrs().Name, r.Err)
			continue
		}
		if err := r.Lease.Configure(); err != nil {
			fmt.Fprintf(os.Stderr, "init: configure %s: %v\n", r.Interface.Attrs().Name, err)
			continue
		}
		leases++
		if m4, _ := r.Lease.Message(); m4 != nil && hint == nil {
			hint = m4.Options.Get(dhcpv4.GenericOptionCode(api.DHCPOptionHints))
		}
	}
	if leases == 0 {
		return nil, fmt.Errorf("no DHCP lease on any of %d interfaces", len(ifs))
	}
	return hint, nil
}

// Cmdline reads /proc/cmdline.
func (l *Linux) Cmdline() (string, error) {
	b, err := os.ReadFile(filepath.Join(l.Root, "/proc/cmdline"))
	return string(b), err
}

// WriteFile writes data, creating the directory.
func (l *Linux) WriteFile(p string, data []byte) error {
	p = filepath.Join(l.Root, p)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, data, 0o644)
}

// Stat reports whether an executable file is at p.
func (l *Linux) Stat(p string) error {
	fi, err := os.Stat(filepath.Join(l.Root, p))
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("not an executable file (mode %s)", fi.Mode())
	}
	return nil
}

// Start starts a stage with the console as its stdio.
func (l *Linux) Start(ctx context.Context, s api.Stage, env []string) (Process, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(l.Root, s.Path), s.Args...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}
