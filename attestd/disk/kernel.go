package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// maxSecret bounds what goes down one pipe: it must fit the pipe buffer
// (64 KiB on Linux) so the write completes before the child starts.
const maxSecret = 4096

// RunProgram is the production Exec: each secret goes down its own pipe,
// written and closed before the program starts, so it reads EOF after the
// secret. The secret is never in argv, the environment or a file.
func RunProgram(ctx context.Context, secrets [][]byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"}
	var readers []*os.File
	defer func() {
		for _, r := range readers {
			r.Close()
		}
	}()
	for i, sec := range secrets {
		if len(sec) > maxSecret {
			return nil, fmt.Errorf("secret %d: %d bytes, more than %d", i, len(sec), maxSecret)
		}
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		readers = append(readers, r)
		_, err = w.Write(sec)
		w.Close()
		if err != nil {
			return nil, fmt.Errorf("secret %d pipe: %w", i, err)
		}
		if i == 0 {
			cmd.Stdin = r
		} else {
			cmd.ExtraFiles = append(cmd.ExtraFiles, r)
		}
	}
	if len(secrets) == 0 {
		cmd.Stdin = nil // /dev/null
	}
	err := cmd.Run()
	return out.Bytes(), err
}

// cryptsetup's exit code for "no key available with this passphrase"
// (cryptsetup(8) RETURN CODES: 2 = no permission, bad passphrase).
const exitBadPassphrase = 2

// NewKernel returns the running kernel's operations: cryptsetup open/close
// (device-mapper), mkfs.ext4, mount(2), and partition nodes found in sysfs.
func NewKernel(run Exec, cryptsetup string) Kernel {
	return &kernel{run: run, cryptsetup: cryptsetup}
}

type kernel struct {
	run        Exec
	cryptsetup string
}

// PartitionPath finds partition n of disk in sysfs (the kernel learnt of
// it by BLKPG when the GPT was written) and waits for devtmpfs to create
// its node.
func (k *kernel) PartitionPath(ctx context.Context, disk string, n int) (string, error) {
	base := filepath.Base(disk)
	sys := filepath.Join("/sys/class/block", base)
	deadline := time.Now().Add(10 * time.Second)
	for {
		ents, _ := os.ReadDir(sys)
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(sys, e.Name(), "partition"))
			if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(n) {
				dev := "/dev/" + e.Name()
				if _, err := os.Stat(dev); err == nil {
					return dev, nil
				}
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no partition %d of %s in %s", n, disk, sys)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (k *kernel) Open(ctx context.Context, part, name string, key []byte) (string, error) {
	out, err := k.run(ctx, [][]byte{key}, k.cryptsetup, "open", "--type", "luks2", "--key-file=-", part, name)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == exitBadPassphrase {
		return "", ErrKeyRejected
	}
	if err != nil {
		return "", fmt.Errorf("cryptsetup open: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return "/dev/mapper/" + name, nil
}

func (k *kernel) Close(ctx context.Context, name string) error {
	out, err := k.run(ctx, nil, k.cryptsetup, "close", name)
	if err != nil {
		return fmt.Errorf("cryptsetup close: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (k *kernel) Mkfs(ctx context.Context, dev string) error {
	out, err := k.run(ctx, nil, "mkfs.ext4", "-q", "-F", "-L", "palisade-var", dev)
	if err != nil {
		return fmt.Errorf("mkfs.ext4: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (k *kernel) Mount(_ context.Context, dev, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return unix.Mount(dev, dir, "ext4", unix.MS_NOSUID|unix.MS_NODEV, "")
}

// skipDisks are block devices that are never a state disk.
var skipDisks = []string{"loop", "ram", "zram", "dm-", "md", "nbd", "sr", "fd"}

// sysBlockDisks lists the whole disks under root (/sys/block), writable
// ones only, sorted by name so the choice among blank disks is stable.
func sysBlockDisks(root string) ([]string, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if slices.ContainsFunc(skipDisks, func(p string) bool { return strings.HasPrefix(n, p) }) {
			continue
		}
		if ro, err := os.ReadFile(filepath.Join(root, n, "ro")); err == nil && strings.TrimSpace(string(ro)) == "1" {
			continue
		}
		out = append(out, "/dev/"+n)
	}
	slices.Sort(out)
	return out, nil
}

// readLUKSPath reads both LUKS2 header copies of the volume at path.
func readLUKSPath(path string) (*luksHeader, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readLUKS(f)
}
