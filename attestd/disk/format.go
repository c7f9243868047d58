package disk

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// keydSlotPBKDF: keyd's key is 64 uniformly random bytes, so stretching it
// buys nothing; PBKDF2 at cryptsetup's minimum (1000 iterations) keeps the
// unlock fast and memory-free, as systemd-cryptenroll does for its
// high-entropy TPM2/FIDO2 keys. Passphrase slots (the owner's recovery)
// use argon2id (ARCHITECTURE §5).
var keydSlotPBKDF = []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--hash", "sha256"}

// format takes a partitioned or formatted-new disk to in-use: luksFormat
// (label LabelNew), the recovery keyslot, open, mkfs.ext4, mount, and only
// then the label LabelInUse. A power cut anywhere before the relabel leaves
// a volume nothing was written to, which the next boot formats again.
func (s *Step) format(ctx context.Context, d *Disk, k Keys) error {
	args := []string{"luksFormat", "--batch-mode", "--type", "luks2", "--cipher", Cipher,
		"--key-size", strconv.Itoa(KeySize), "--uuid", d.UUID, "--label", LabelNew, "--key-slot", "0"}
	args = append(args, keydSlotPBKDF...)
	if s.cfg.Integrity {
		args = append(args, "--integrity", "hmac-sha256")
	}
	args = append(args, "--key-file=-", d.Partition)
	if _, err := s.cryptsetup(ctx, [][]byte{k.Disk}, args...); err != nil {
		return err
	}
	wantSlots := map[string]string{"0": "pbkdf2"}
	if len(k.Recovery) > 0 {
		// The existing key on stdin, the new one on fd 3: two pipes. By
		// /proc/self/fd: the initramfs has no /dev/fd link (devtmpfs makes
		// none; found by the first QEMU format).
		add := []string{"luksAddKey", "--batch-mode", "--key-file=-", "--new-keyfile=/proc/self/fd/3",
			"--new-key-slot", "1", "--pbkdf", "argon2id"}
		if p := s.cfg.RecoveryPBKDF; p.Iterations > 0 {
			add = append(add, "--pbkdf-force-iterations", strconv.Itoa(p.Iterations))
		}
		if p := s.cfg.RecoveryPBKDF; p.MemoryKiB > 0 {
			add = append(add, "--pbkdf-memory", strconv.Itoa(p.MemoryKiB))
		}
		add = append(add, d.Partition)
		if _, err := s.cryptsetup(ctx, [][]byte{k.Disk, k.Recovery}, add...); err != nil {
			return err
		}
		wantSlots["1"] = "argon2id"
	} else {
		s.log.Error("STATE DISK FORMATTED WITHOUT THE OWNER'S RECOVERY KEYSLOT (test images only)", "partition", d.Partition)
		s.console("WARNING: %s has no recovery keyslot", d.Partition)
	}
	if err := s.verifyFormat(ctx, d, wantSlots); err != nil {
		return err
	}
	s.console("formatted %s uuid=%s", d.Partition, d.UUID)
	mapped, err := s.deps.Kernel.Open(ctx, d.Partition, s.cfg.MapperName, k.Disk)
	if err != nil {
		return fmt.Errorf("open %s: %w", d.Partition, err)
	}
	if err := s.deps.Kernel.Mkfs(ctx, mapped); err != nil {
		s.closeMapping(ctx)
		return fmt.Errorf("mkfs %s: %w", mapped, err)
	}
	if err := s.deps.Kernel.Mount(ctx, mapped, s.cfg.MountPoint); err != nil {
		s.closeMapping(ctx)
		return fmt.Errorf("mount %s on %s: %w", mapped, s.cfg.MountPoint, err)
	}
	if _, err := s.cryptsetup(ctx, nil, "config", "--label", LabelInUse, d.Partition); err != nil {
		// Mounted but still labelled new: the next boot formats again,
		// so nothing may be written to it. Say so loudly.
		return fmt.Errorf("mark %s in use (the volume stays formatted-new and is formatted again on the next boot): %w", d.Partition, err)
	}
	s.console("unlocked %s uuid=%s mounted %s", d.Partition, d.UUID, s.cfg.MountPoint)
	return s.recordMount(d)
}

// verifyFormat checks what cryptsetup wrote: the UUID keyd's key is bound
// to, the header policy an in-use disk must pass, and the keyslots with
// their PBKDFs (luksDump --dump-json-metadata).
func (s *Step) verifyFormat(ctx context.Context, d *Disk, slots map[string]string) error {
	out, err := s.cryptsetup(ctx, nil, "luksUUID", d.Partition)
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(string(out)); got != d.UUID {
		return fmt.Errorf("formatted %s: luksUUID %q, want %s", d.Partition, got, d.UUID)
	}
	h, err := readLUKSPath(d.Partition)
	if err != nil {
		return err
	}
	if err := checkInUse(h, d.UUID, s.cfg.Integrity); err != nil {
		return fmt.Errorf("formatted %s: %w", d.Partition, err)
	}
	out, err = s.cryptsetup(ctx, nil, "luksDump", "--dump-json-metadata", d.Partition)
	if err != nil {
		return err
	}
	var meta struct {
		Keyslots map[string]struct {
			KDF struct {
				Type string `json:"type"`
			} `json:"kdf"`
		} `json:"keyslots"`
	}
	if err := json.Unmarshal(out, &meta); err != nil {
		return fmt.Errorf("formatted %s: luksDump JSON: %w", d.Partition, err)
	}
	if len(meta.Keyslots) != len(slots) {
		return fmt.Errorf("formatted %s: %d keyslots, want %d", d.Partition, len(meta.Keyslots), len(slots))
	}
	for id, kdf := range slots {
		if got := meta.Keyslots[id].KDF.Type; got != kdf {
			return fmt.Errorf("formatted %s: keyslot %s kdf %q, want %q", d.Partition, id, got, kdf)
		}
	}
	return nil
}

// open takes an in-use disk to mounted. It re-reads the header right
// before cryptsetup touches it: Prepare's check ran before the join, and
// cryptsetup would silently repair a copy edited since.
func (s *Step) open(ctx context.Context, d *Disk, key []byte) error {
	h, err := readLUKSPath(d.Partition)
	if err != nil {
		return err
	}
	if stateOf(h) != StateInUse {
		return s.Refuse(d.Partition, fmt.Errorf("%w: the in-use label is gone since discovery", ErrHeaderAltered))
	}
	if err := checkInUse(h, d.UUID, s.cfg.Integrity); err != nil {
		return s.Refuse(d.Partition, err)
	}
	if _, err := s.cryptsetup(ctx, nil, "isLuks", "--type", "luks2", d.Partition); err != nil {
		return s.Refuse(d.Partition, fmt.Errorf("%w: %w", ErrHeaderAltered, err))
	}
	mapped, err := s.deps.Kernel.Open(ctx, d.Partition, s.cfg.MapperName, key)
	if err != nil {
		return s.Refuse(d.Partition, fmt.Errorf("uuid=%s: %w", d.UUID, err))
	}
	if err := s.deps.Kernel.Mount(ctx, mapped, s.cfg.MountPoint); err != nil {
		// Never formatted over: the data may be recoverable.
		s.closeMapping(ctx)
		return fmt.Errorf("mount %s on %s (in-use volume, not formatted again): %w", mapped, s.cfg.MountPoint, err)
	}
	if h.Primary.Label != LabelInUse || h.Secondary.Label != LabelInUse {
		// A power cut during the first relabel: finish it.
		if _, err := s.cryptsetup(ctx, nil, "config", "--label", LabelInUse, d.Partition); err != nil {
			return err
		}
	}
	s.console("unlocked %s uuid=%s mounted %s", d.Partition, d.UUID, s.cfg.MountPoint)
	return s.recordMount(d)
}

func (s *Step) closeMapping(ctx context.Context) {
	if err := s.deps.Kernel.Close(ctx, s.cfg.MapperName); err != nil {
		s.log.Warn("close mapping", "name", s.cfg.MapperName, "err", err)
	}
}
