package build

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/palisade-cc/palisade/images/cpio"
)

// Package pins one Debian package by version and the sha256 of its .deb.
type Package struct {
	Name, Version, SHA256 string
}

// Userland are the Debian packages whose programs the state disk needs in
// the initramfs (attestd runs cryptsetup and mke2fs; ARCHITECTURE §5), with
// every library they link. Bumping one changes the initrd and therefore
// every reference value, like the kernel pin.
var Userland = []Package{
	{"cryptsetup-bin", "2:2.6.1-4~deb12u2", "ac25a10b8c7a5fbd4ffe64a830edd24a7e04b3416914bbb096c21e92e15a65d2"},
	{"e2fsprogs", "1.47.0-2+b2", "fedd424691c08ef0739729026be298e7be8236337bf8e031b3c7ec66794e6fc2"},
	{"libargon2-1", "0~20171227-0.3+deb12u1", "4a8155b06270b88eed34d132acfc8ccc0b85499e1c4bfd7f31f8b199af42b1de"},
	{"libblkid1", "2.38.1-5+deb12u3", "5a083377f29191cafcdf0f91ec124349b4a7895b531556633a136e43c6d53943"},
	{"libc6", "2.36-9+deb12u14", "ba4f88f73dbc3ae9055f3c20f4523bfdbaf1ad13ff95e258924f77d20b4fbedf"},
	{"libcom-err2", "1.47.0-2+b2", "a2bac7015e78fbc0c504df3e441f3a22292f1d2d77f9ccda760057f3690e22f2"},
	{"libcryptsetup12", "2:2.6.1-4~deb12u2", "b9a607c219be5ef04bc0fcfaec3752d9a1ba07df8d3bb2aed9bf348f90d1b6cc"},
	{"libdevmapper1.02.1", "2:1.02.185-2", "aaa78ca236055fedccf637eacf7bda02bf1980b2db668dccd202b04d0d2cfe04"},
	{"libext2fs2", "1.47.0-2+b2", "dff731f2318df99da4b8bf5f330f415f95b94c609bac29e7b2edba0a38f22a98"},
	{"libjson-c5", "0.16-2", "d0e1ed8637d1c26b9720f6057d6355f18378bba5cc2553e459d1632783c00d70"},
	{"libpcre2-8-0", "10.42-1+deb12u2", "d2f7edfcc7689b9e0761c2742cc824ac86a20768bc5e8057818dc6875291fe76"},
	{"libpopt0", "1.19+dfsg-1", "6f94b488255acd996254f775c77ff3956557c61f860a3c9caeaf65457554194f"},
	{"libselinux1", "3.4-1+b6", "2b07f5287b9105f40158b56e4d70cc1652dac56a408f3507b4ab3d061eed425f"},
	{"libssl3", "3.0.22-1~deb12u2", "cb4784740daa9b3b0eaea2b444bbefa686794afbbf3d678d238c1fd9875f2efd"},
	{"libudev1", "252.39-1~deb12u2", "6f7e08f11c4809d2e5998c775f7b423ab5ec2ce0309494b4a2615037052245e2"},
	{"libuuid1", "2.38.1-5+deb12u3", "5fff398321da62d28a842bcbabd193d72ae21724962c029dc32b1dc6b2deaeaf"},
}

// UserlandTools are installed as /bin/<name> from the unpacked packages.
var UserlandTools = map[string]string{
	"cryptsetup": "sbin/cryptsetup",
	"mkfs.ext4":  "sbin/mke2fs",
}

// libDirs are searched for DT_NEEDED names, in the dynamic loader's order.
var libDirs = []string{"lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64"}

// fetchDeb downloads p into the cache unless it is there, and checks its pin.
func fetchDeb(ctx context.Context, o Options, p Package) (string, error) {
	file := strings.ReplaceAll(fmt.Sprintf("%s_%s_amd64.deb", p.Name, p.Version), ":", "%3a")
	deb := filepath.Join(o.Cache, file)
	if _, err := os.Stat(deb); err != nil {
		tmp, err := os.MkdirTemp(o.Cache, "apt-")
		if err != nil {
			return "", err
		}
		defer os.RemoveAll(tmp)
		o.logf("      apt-get download %s=%s", p.Name, p.Version)
		if err := run(ctx, tmp, nil, "apt-get", "download", p.Name+"="+p.Version); err != nil {
			return "", err
		}
		m, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
		if len(m) != 1 {
			return "", fmt.Errorf("apt-get download %s: %d .deb files", p.Name, len(m))
		}
		if err := os.Rename(m[0], deb); err != nil {
			return "", err
		}
	}
	b, err := os.ReadFile(deb)
	if err != nil {
		return "", err
	}
	if s := sha256.Sum256(b); hex.EncodeToString(s[:]) != p.SHA256 {
		return "", fmt.Errorf("%s: sha256 %x, pinned %s", deb, s, p.SHA256)
	}
	return deb, nil
}

// addUserland unpacks the pinned packages and adds each tool with the
// transitive closure of its DT_NEEDED libraries and the ELF interpreter,
// found in the packages only (never on the build host).
func addUserland(ctx context.Context, o Options, work string, a *cpio.Archive) error {
	root := filepath.Join(work, "userland")
	for _, p := range Userland {
		deb, err := fetchDeb(ctx, o, p)
		if err != nil {
			return err
		}
		if err := run(ctx, "", nil, "dpkg", "-x", deb, root); err != nil {
			return err
		}
	}
	files := map[string]bool{}
	var queue []string
	names := make([]string, 0, len(UserlandTools))
	for n := range UserlandTools {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		src := filepath.Join(root, UserlandTools[n])
		b, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("userland %s: %w", n, err)
		}
		if err := a.File("bin/"+n, 0o755, b); err != nil {
			return err
		}
		queue = append(queue, src)
	}
	for len(queue) > 0 {
		f := queue[0]
		queue = queue[1:]
		ef, err := elf.Open(f)
		if err != nil {
			return fmt.Errorf("userland %s: %w", f, err)
		}
		needed, err := ef.ImportedLibraries()
		interp := ""
		for _, p := range ef.Progs {
			if p.Type == elf.PT_INTERP {
				b := make([]byte, p.Filesz)
				if _, err := p.ReadAt(b, 0); err == nil {
					interp = strings.TrimRight(string(b), "\x00")
				}
			}
		}
		ef.Close()
		if err != nil {
			return fmt.Errorf("userland %s: %w", f, err)
		}
		if interp != "" {
			// /lib64/ld-linux-x86-64.so.2 is a symlink in libc6: keep
			// the link and add its target.
			rel := strings.TrimPrefix(interp, "/")
			if err := addFileOrLink(a, root, rel, files, &queue); err != nil {
				return err
			}
		}
		for _, lib := range needed {
			found := false
			for _, d := range libDirs {
				rel := path.Join(d, lib)
				if _, err := os.Lstat(filepath.Join(root, rel)); err == nil {
					if err := addFileOrLink(a, root, rel, files, &queue); err != nil {
						return err
					}
					found = true
					break
				}
			}
			if !found {
				return fmt.Errorf("userland: %s needs %s, which no pinned package provides", f, lib)
			}
		}
	}
	o.logf("      userland: %s and %d libraries from %d pinned packages", strings.Join(names, ", "), len(files), len(Userland))
	return nil
}

// addFileOrLink adds rel (a file or a symlink chain inside root) once, and
// queues regular files for their own dependencies.
func addFileOrLink(a *cpio.Archive, root, rel string, seen map[string]bool, queue *[]string) error {
	for range 8 {
		if seen[rel] {
			return nil
		}
		seen[rel] = true
		p := filepath.Join(root, rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("userland: %w", err)
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			*queue = append(*queue, p)
			return a.File(rel, 0o755, b)
		}
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		if err := a.Add(cpio.Entry{Name: rel, Mode: fs.ModeSymlink | 0o777, Data: []byte(target)}); err != nil {
			return err
		}
		if path.IsAbs(target) {
			rel = strings.TrimPrefix(target, "/")
		} else {
			rel = path.Join(path.Dir(rel), target)
		}
	}
	return fmt.Errorf("userland: symlink chain at %s too long", rel)
}
