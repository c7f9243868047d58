// Package disk is attestd's state-disk step: it finds the node's LUKS2 state
// partition by GPT type and name (go-blockdevice), formats a blank disk on
// first boot and opens it on later boots, with the key keyd released after
// attestation, then mounts it at /var.
//
// It is not a key broker and makes no trust decision about the node: it
// takes the disk key it is handed, keeps it in locked memory, passes it to
// cryptsetup on a pipe only, and refuses disks that are not Palisade's or
// whose header was edited. The first format is a crash-safe state machine
// (blank → partitioned → formatted-new → in-use, docs/attestd.md §Disks):
// a disk that never reached in-use is formatted again; an in-use disk never
// is, whatever fails.
package disk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/google/uuid"
	"golang.org/x/sys/unix"
)

// LUKS2 parameters (ARCHITECTURE §5).
const (
	Cipher = "aes-xts-plain64"
	// KeySize is the volume key size in bits (two AES-256 keys for XTS).
	KeySize = 512
	// DiskKeySize is the length of keyd's disk key (keyd/api.DiskKeySize).
	DiskKeySize = 64
	// LabelNew marks a header whose volume was never mounted: a disk
	// still so labelled may be formatted again. LabelInUse is set only
	// after the first successful mount and is never formatted over.
	LabelNew   = "palisade-new"
	LabelInUse = "palisade-state"
)

// State is where a state disk is in its life (docs/attestd.md §Disks).
type State int

const (
	// StateBlank: all zero where a GPT goes, or the entry arrays of an
	// interrupted partitioning only.
	StateBlank State = iota
	// StatePartitioned: Palisade's GPT; no valid LUKS2 header copy.
	StatePartitioned
	// StateFormattedNew: a LUKS2 header labelled LabelNew (or none
	// valid labelled in use); nothing was ever written to the volume.
	StateFormattedNew
	// StateInUse: a valid header copy labelled LabelInUse.
	StateInUse
)

func (s State) String() string {
	switch s {
	case StateBlank:
		return "blank"
	case StatePartitioned:
		return "partitioned"
	case StateFormattedNew:
		return "formatted-new"
	case StateInUse:
		return "in-use"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Failure classes a caller must tell apart (attestd maps each to an exit
// code).
var (
	// ErrForeign: no state disk and no blank disk, but disks with another
	// partition table or other data, which are never touched.
	ErrForeign = errors.New("no Palisade state disk; other disks hold data and were not touched")
	// ErrHeaderAltered: the LUKS2 header fails its checksums, disagrees
	// with the partition, or describes a volume Palisade does not make.
	ErrHeaderAltered = errors.New("LUKS2 header altered")
	// ErrKeyRejected: the in-use volume does not open with keyd's key.
	ErrKeyRejected = errors.New("LUKS2 volume does not open with keyd's key")
	// ErrUUIDMismatch: keyd returned no key for the disk's LUKS UUID
	// (it recorded another disk for this node).
	ErrUUIDMismatch = errors.New("disk LUKS UUID differs from the one keyd recorded for this node")
	// ErrNoRecoveryKey: formatting needs the owner's recovery key.
	ErrNoRecoveryKey = errors.New("no owner recovery key for the second keyslot")
)

// Mode says whether attestd looks for a state disk at all.
const (
	ModeOff  = "off"
	ModeAuto = "auto"
)

// Config is the state-disk step's configuration.
type Config struct {
	// Mode is ModeAuto (find or make the state disk) or ModeOff (never
	// touch a disk). The zero value is ModeOff: a library caller gets no
	// disk writes unless it asks.
	Mode string
	// Devices are the whole disks to consider; nil: every disk in
	// /sys/block except loop, ram, zram, dm, md, nbd, sr, fd devices.
	Devices []string
	// MountPoint is where the volume is mounted (default /var).
	MountPoint string
	// MapperName is the device-mapper name (default palisade-state).
	MapperName string
	// Integrity adds dm-integrity (--integrity hmac-sha256) at format
	// and requires it at open.
	Integrity bool
	// WithoutRecoverySlot formats with the keyd keyslot only, for a keyd
	// too old to send the owner's recovery key (keyd/api DiskKey.Recovery);
	// every such format is logged at error level.
	WithoutRecoverySlot bool
	// RecoveryPBKDF bounds argon2id for the recovery slot; zero values
	// leave cryptsetup's benchmark (2 s, up to 1 GiB) in charge.
	RecoveryPBKDF PBKDF
}

// PBKDF forces argon2id costs (tests use tiny ones).
type PBKDF struct {
	Iterations int
	MemoryKiB  int
}

// SetDefaults fills the zero fields.
func (c *Config) SetDefaults() {
	if c.Mode == "" {
		c.Mode = ModeOff
	}
	if c.MountPoint == "" {
		c.MountPoint = "/var"
	}
	if c.MapperName == "" {
		c.MapperName = "palisade-state"
	}
}

// Validate names the first bad field.
func (c *Config) Validate() error {
	if c.Mode != ModeOff && c.Mode != ModeAuto {
		return fmt.Errorf("disk.mode %q: want %q or %q", c.Mode, ModeAuto, ModeOff)
	}
	if !filepath.IsAbs(c.MountPoint) {
		return fmt.Errorf("disk.mount_point %q: want an absolute path", c.MountPoint)
	}
	if c.MapperName == "" || strings.ContainsAny(c.MapperName, "/ \t\n") {
		return fmt.Errorf("disk.mapper_name %q: want a device-mapper name", c.MapperName)
	}
	if c.RecoveryPBKDF.Iterations < 0 || c.RecoveryPBKDF.MemoryKiB < 0 {
		return fmt.Errorf("disk.recovery_pbkdf: negative cost")
	}
	return nil
}

// Kernel is what needs the running kernel (device-mapper, ext4, mounts,
// partition device nodes); host tests fake it.
type Kernel interface {
	// PartitionPath returns the device of partition n of disk.
	PartitionPath(ctx context.Context, disk string, n int) (string, error)
	// Open maps the LUKS2 volume at part as name with key (on a pipe),
	// returning the mapped device. A key that opens no keyslot is
	// ErrKeyRejected.
	Open(ctx context.Context, part, name string, key []byte) (string, error)
	// Close removes the mapping.
	Close(ctx context.Context, name string) error
	// Mkfs makes an ext4 file system on dev.
	Mkfs(ctx context.Context, dev string) error
	// Mount mounts dev (ext4) on dir.
	Mount(ctx context.Context, dev, dir string) error
}

// Exec runs a program with secrets on pipes: secrets[0] becomes its stdin,
// secrets[i] its file descriptor 2+i (/proc/self/fd/3, …). Never argv, never a
// file. It returns the combined output.
type Exec func(ctx context.Context, secrets [][]byte, name string, args ...string) ([]byte, error)

// Deps are the step's dependencies; the zero value is production.
type Deps struct {
	// Exec runs cryptsetup; nil: os/exec with pipes.
	Exec Exec
	// Kernel is the running kernel; nil: NewKernel(Exec).
	Kernel Kernel
	// ListDisks returns the whole disks to consider when
	// Config.Devices is nil; nil: /sys/block.
	ListDisks func() ([]string, error)
	// NewUUID makes the LUKS UUID of a first format; nil: random (v4).
	NewUUID func() (uuid.UUID, error)
	// Console receives the boot console lines; nil: discard.
	Console io.Writer
	// Cryptsetup is the binary (default "cryptsetup", from PATH).
	Cryptsetup string

	// gptStop simulates a power cut while partitioning (tests).
	gptStop func(rank int) bool
}

// Step is the state-disk step of one boot.
type Step struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
}

// New checks cfg and fills the production defaults.
func New(cfg Config, deps Deps, log *slog.Logger) (*Step, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Exec == nil {
		deps.Exec = RunProgram
	}
	if deps.Cryptsetup == "" {
		deps.Cryptsetup = "cryptsetup"
	}
	if deps.Kernel == nil {
		deps.Kernel = NewKernel(deps.Exec, deps.Cryptsetup)
	}
	if deps.ListDisks == nil {
		deps.ListDisks = func() ([]string, error) { return sysBlockDisks("/sys/block") }
	}
	if deps.NewUUID == nil {
		deps.NewUUID = uuid.NewRandom
	}
	if deps.Console == nil {
		deps.Console = io.Discard
	}
	return &Step{cfg: cfg, deps: deps, log: log}, nil
}

// Enabled reports whether the step looks at disks at all.
func (s *Step) Enabled() bool { return s.cfg.Mode == ModeAuto }

// Disk is the state disk found (and, when blank, partitioned) by Prepare.
type Disk struct {
	// Device is the whole disk, Partition the state partition's device.
	Device, Partition string
	// UUID is the LUKS UUID to claim from keyd: the partition's unique
	// GUID, which the first format gives the LUKS2 header.
	UUID string
	// State is the state before this boot's unlock.
	State State
}

func (s *Step) console(format string, args ...any) {
	fmt.Fprintf(s.deps.Console, "attestd: disk: "+format+"\n", args...)
}

// Refuse prints the console line of a refusal and returns err.
func (s *Step) Refuse(dev string, err error) error {
	if dev == "" {
		s.console("refused: %v", err)
	} else {
		s.console("refused %s: %v", dev, err)
	}
	return err
}

// Prepare finds the state disk before the join, so its UUID can be
// claimed. A blank disk is partitioned here (its partition GUID is the
// LUKS UUID to be): the UUID must be on the disk before keyd records it,
// or a power cut between the admission and the partitioning would leave
// keyd holding a UUID no disk has, and the node denied as a disk swap.
// Nothing else is written before keyd admitted the node. nil, nil means
// diskless.
func (s *Step) Prepare(ctx context.Context) (*Disk, error) {
	devs := s.cfg.Devices
	if devs == nil {
		var err error
		if devs, err = s.deps.ListDisks(); err != nil {
			return nil, fmt.Errorf("list disks: %w", err)
		}
	}
	var ours, blank []string
	foreign := 0
	for _, dev := range devs {
		d, err := openDevice(dev, false)
		if err != nil {
			s.log.Warn("disk skipped", "disk", dev, "err", err)
			continue
		}
		k, _, why, err := classify(d)
		d.Close()
		if err != nil {
			return nil, fmt.Errorf("disk %s: %w", dev, err)
		}
		s.log.Info("disk", "disk", dev, "kind", k, "why", why)
		switch k {
		case kindOurs:
			ours = append(ours, dev)
		case kindBlank:
			blank = append(blank, dev)
		default:
			foreign++
			s.console("skipped %s: %s; not touched", dev, why)
		}
	}
	switch {
	case len(ours) > 1:
		return nil, s.Refuse("", fmt.Errorf("%w: %d disks carry a %s partition (%s): which one is this node's is ambiguous",
			ErrHeaderAltered, len(ours), PartitionName, strings.Join(ours, ", ")))
	case len(ours) == 1:
		return s.inspect(ctx, ours[0])
	case len(blank) > 0:
		return s.partition(ctx, blank[0])
	case foreign > 0:
		return nil, s.Refuse("", ErrForeign)
	}
	s.console("none (diskless)")
	return nil, nil
}

// partition writes the GPT of a blank disk.
func (s *Step) partition(ctx context.Context, dev string) (*Disk, error) {
	u, err := s.deps.NewUUID()
	if err != nil {
		return nil, err
	}
	d, err := openDevice(dev, true)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", dev, err)
	}
	defer d.Close()
	// Classify again on the handle that writes: the disk is written only
	// if it is still blank.
	if k, _, why, err := classify(d); err != nil || k != kindBlank {
		return nil, fmt.Errorf("disk %s: no longer blank (%s): %v", dev, why, err)
	}
	if _, err := writeTable(d, u, s.deps.gptStop); err != nil {
		return nil, fmt.Errorf("disk %s: %w", dev, err)
	}
	s.log.Info("disk partitioned", "disk", dev, "uuid", u.String())
	return s.inspect(ctx, dev)
}

// inspect reads the state partition's LUKS2 header and decides the state.
func (s *Step) inspect(ctx context.Context, dev string) (*Disk, error) {
	d, err := openDevice(dev, false)
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", dev, err)
	}
	k, p, why, err := classify(d)
	d.Close()
	if err != nil {
		return nil, fmt.Errorf("disk %s: %w", dev, err)
	}
	if k != kindOurs {
		return nil, fmt.Errorf("disk %s: state partition gone (%s)", dev, why)
	}
	part, err := s.deps.Kernel.PartitionPath(ctx, dev, 1)
	if err != nil {
		return nil, fmt.Errorf("disk %s: partition 1: %w", dev, err)
	}
	h, err := readLUKSPath(part)
	if err != nil {
		return nil, fmt.Errorf("partition %s: %w", part, err)
	}
	disk := &Disk{Device: dev, Partition: part, UUID: p.PartGUID.String(), State: stateOf(h)}
	if disk.State == StateInUse {
		if err := checkInUse(h, disk.UUID, s.cfg.Integrity); err != nil {
			return nil, s.Refuse(part, err)
		}
	}
	s.log.Info("state disk", "disk", dev, "partition", part, "uuid", disk.UUID, "state", disk.State.String())
	return disk, nil
}

// stateOf is the state a partition's header copies put it in. Any valid
// copy labelled in use makes the volume in use: cryptsetup rewrites the
// copies one after the other, so a power cut during the relabel leaves
// one copy of each label.
func stateOf(h *luksHeader) State {
	valid := false
	for _, c := range []luksCopy{h.Primary, h.Secondary} {
		if c.Valid && c.Label == LabelInUse {
			return StateInUse
		}
		valid = valid || c.Valid
	}
	if valid || h.any() {
		return StateFormattedNew
	}
	return StatePartitioned
}

// Keys are the secrets of one unlock. Disk is keyd's key for the disk's
// UUID; Recovery the owner's recovery passphrase or key (second keyslot,
// argon2id), needed only to format.
type Keys struct {
	Disk, Recovery []byte
}

// Unlock formats (partitioned, formatted-new) or opens (in-use) the state
// disk and mounts it. The keys are locked in memory while it runs; the
// caller zeroes them afterwards (attestd.Admission.Wipe).
func (s *Step) Unlock(ctx context.Context, d *Disk, k Keys) error {
	if len(k.Disk) != DiskKeySize {
		return s.Refuse(d.Partition, fmt.Errorf("%w: keyd's key for uuid=%s has %d bytes, want %d", ErrUUIDMismatch, d.UUID, len(k.Disk), DiskKeySize))
	}
	for _, b := range [][]byte{k.Disk, k.Recovery} {
		if len(b) > 0 {
			// Best effort: locked pages are not swapped out; without
			// CAP_IPC_LOCK or over RLIMIT_MEMLOCK this fails harmlessly.
			if err := unix.Mlock(b); err == nil {
				defer unix.Munlock(b)
			}
		}
	}
	if d.State == StateInUse {
		return s.open(ctx, d, k.Disk)
	}
	if len(k.Recovery) == 0 && !s.cfg.WithoutRecoverySlot {
		return s.Refuse(d.Partition, ErrNoRecoveryKey)
	}
	return s.format(ctx, d, k)
}

// cryptsetup runs one cryptsetup command.
func (s *Step) cryptsetup(ctx context.Context, secrets [][]byte, args ...string) ([]byte, error) {
	out, err := s.deps.Exec(ctx, secrets, s.deps.Cryptsetup, args...)
	if err != nil {
		return out, fmt.Errorf("cryptsetup %s: %w: %s", args[0], err, strings.TrimSpace(string(out)))
	}
	return out, nil
}
