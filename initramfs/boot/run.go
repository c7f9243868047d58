package boot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"

	"github.com/palisade-cc/palisade/initramfs/api"
	"github.com/palisade-cc/palisade/internal/modalias"
)

// Mount is one file system the init mounts before anything else.
type Mount struct {
	Source, Target, FSType string
	Flags                  uintptr
	Data                   string
}

// Process is a started stage.
type Process interface {
	// Wait returns when the stage exits; nil means exit status 0.
	Wait() error
}

// System is what the boot sequence needs from the machine. The production
// implementation is Linux (NewLinux); tests use a fake.
type System interface {
	Mount(m Mount) error
	LoadModule(name string) error
	// Modaliases lists the modalias of every device present
	// (/sys/bus/*/devices/*/modalias).
	Modaliases() ([]string, error)
	// ModuleAliases is the initramfs's modules.alias for the running
	// kernel, parsed (modalias.Parse).
	ModuleAliases() (map[string][]string, error)
	// Network brings interfaces up with DHCP and returns the raw value of
	// option DHCPOptionHints from the first lease that carried it (nil if
	// none did).
	Network(ctx context.Context, c api.NetworkConfig) ([]byte, error)
	Cmdline() (string, error)
	WriteFile(path string, data []byte) error
	// Stat reports whether an executable exists at path.
	Stat(path string) error
	Start(ctx context.Context, s api.Stage, env []string) (Process, error)
}

// Mounts are the pseudo file systems every stage relies on: attestd needs
// securityfs (TPM event log).
var Mounts = []Mount{
	{Source: "proc", Target: "/proc", FSType: "proc"},
	{Source: "sysfs", Target: "/sys", FSType: "sysfs"},
	{Source: "devtmpfs", Target: "/dev", FSType: "devtmpfs", Data: "mode=0755"},
	{Source: "tmpfs", Target: "/run", FSType: "tmpfs", Data: "mode=0755"},
	{Source: "securityfs", Target: "/sys/kernel/security", FSType: "securityfs"},
}

// LateMounts follow the modules: configfs (configfs-tsm reports on SNP/TDX)
// is a module in Debian's kernel, and /sys/kernel/config exists only once
// it is loaded (found by the first QEMU boot of the image).
var LateMounts = []Mount{
	{Source: "configfs", Target: "/sys/kernel/config", FSType: "configfs"},
}

// ErrNoDevice is what LoadModule returns when the module loaded but found
// none of its hardware (the kernel's ENODEV): sev_guest on a machine that is
// not an SEV-SNP guest. One image serves every platform, so the boot goes on.
var ErrNoDevice = errors.New("no device for this module")

// ErrStageMissing is returned when a configured stage is not in the image.
var ErrStageMissing = errors.New("stage missing from this image")

// Run executes the boot sequence and returns only on failure or when every
// daemon stage has exited (which is a failure too: a node's daemons do not
// stop). The caller decides what follows (halt in production, a shell in
// debug).
func Run(ctx context.Context, log *slog.Logger, c *api.Config, sys System) error {
	if err := c.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	for _, m := range Mounts {
		log.Info("mount", "target", m.Target, "fstype", m.FSType)
		if err := sys.Mount(m); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err)
		}
	}
	for _, name := range c.Modules {
		log.Info("load module", "module", name)
		if err := sys.LoadModule(name); errors.Is(err, ErrNoDevice) {
			log.Info("module skipped: no such hardware here", "module", name)
		} else if err != nil {
			return fmt.Errorf("load module %s: %w", name, err)
		}
	}
	if err := loadDeviceModules(log, c.DeviceModules, sys); err != nil {
		return err
	}
	for _, m := range LateMounts {
		log.Info("mount", "target", m.Target, "fstype", m.FSType)
		if err := sys.Mount(m); err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err)
		}
	}
	cmdline, err := sys.Cmdline()
	if err != nil {
		return fmt.Errorf("read kernel cmdline: %w", err)
	}
	ch, err := api.ParseCmdline(cmdline)
	if err != nil {
		return err
	}
	var dh api.Hints
	if !c.Network.Disabled {
		log.Info("network: dhcp", "interfaces", c.Network.Interfaces)
		opt, err := sys.Network(ctx, c.Network)
		if err != nil {
			return fmt.Errorf("network: %w", err)
		}
		if opt != nil {
			// A malformed DHCP hint is the provisioner's problem, not a
			// reason to stop: hints are optional and untrusted.
			if dh, err = api.ParseDHCPOption(opt); err != nil {
				log.Warn("ignoring dhcp hints", "err", err)
				dh = api.Hints{}
			}
		}
	}
	h := api.Merge(ch, dh)
	hb, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if err := sys.WriteFile(c.HintsPath, hb); err != nil {
		return fmt.Errorf("write hints: %w", err)
	}
	log.Info("hints (untrusted)", "keyd", strings.Join(h.Keyd, ","), "cluster", h.Cluster, "status", h.Status, "sources", strings.Join(h.Sources, ","))

	// Check every stage before starting any, so a missing meshd is
	// reported before attestd has joined and unlocked disks.
	for _, s := range c.Stages {
		if err := sys.Stat(s.Path); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("stage %s: %s: %w", s.Name, s.Path, ErrStageMissing)
			}
			return fmt.Errorf("stage %s: %s: %w", s.Name, s.Path, err)
		}
	}
	env := []string{
		"PATH=/bin",
		"PALISADE_PROFILE=" + c.Profile,
		"PALISADE_HINTS=" + c.HintsPath,
		"PALISADE_MANIFEST_KEY=" + c.ManifestKey,
	}
	if c.RekorKey != "" {
		env = append(env, "PALISADE_REKOR_KEY="+c.RekorKey)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type exit struct {
		name string
		err  error
	}
	exits := make(chan exit, len(c.Stages))
	daemons := 0
	for _, s := range c.Stages {
		log.Info("stage start", "stage", s.Name, "path", s.Path, "mode", s.Mode)
		p, err := sys.Start(ctx, s, env)
		if err != nil {
			return fmt.Errorf("stage %s: start: %w", s.Name, err)
		}
		if s.Mode == api.ModeOneshot {
			if err := p.Wait(); err != nil {
				return fmt.Errorf("stage %s: %w", s.Name, err)
			}
			log.Info("stage done", "stage", s.Name)
			continue
		}
		daemons++
		go func() { exits <- exit{s.Name, p.Wait()} }()
	}
	if daemons == 0 {
		return fmt.Errorf("every stage exited; nothing keeps the node running")
	}
	e := <-exits
	return fmt.Errorf("stage %s exited: %v", e.name, e.err)
}

// loadDeviceModules loads those of names whose hardware is present.
func loadDeviceModules(log *slog.Logger, names []string, sys System) error {
	if len(names) == 0 {
		return nil
	}
	devs, err := sys.Modaliases()
	if err != nil {
		return fmt.Errorf("device modules: %w", err)
	}
	aliases, err := sys.ModuleAliases()
	if err != nil {
		return fmt.Errorf("device modules: %w", err)
	}
	for _, name := range names {
		if _, ok := aliases[modalias.Name(name)]; !ok {
			return fmt.Errorf("device module %s: not in this initramfs's modules.alias", name)
		}
	}
	load := modalias.Match(names, aliases, devs)
	log.Info("device modules", "devices", len(devs), "matched", strings.Join(load, " "))
	for _, name := range load {
		log.Info("load module", "module", name, "reason", "device present")
		if err := sys.LoadModule(name); errors.Is(err, ErrNoDevice) {
			log.Info("module skipped: no such hardware here", "module", name)
		} else if err != nil {
			return fmt.Errorf("load module %s: %w", name, err)
		}
	}
	return nil
}
