package meshd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// LoadOrCreateKey returns the node's WireGuard private key from path,
// generating it on first use. The key is generated here, on the node, and is
// never sent anywhere: only its public key leaves the node, as a claim the
// node's evidence commits to (ARCHITECTURE §4.2). An existing file readable by
// anyone but its owner is refused rather than used, since a leaked key lets
// the holder impersonate the node in the mesh.
func LoadOrCreateKey(path string) (wgtypes.Key, error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		st, err := os.Stat(path)
		if err != nil {
			return wgtypes.Key{}, fmt.Errorf("key file %s: %w", path, err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			return wgtypes.Key{}, fmt.Errorf("key file %s: mode %v, want 0600 (group/other may not read a private key)", path, st.Mode().Perm())
		}
		k, err := wgtypes.ParseKey(string(trimNewline(b)))
		if err != nil {
			return wgtypes.Key{}, fmt.Errorf("key file %s: %w", path, err)
		}
		if k == (wgtypes.Key{}) {
			return wgtypes.Key{}, fmt.Errorf("key file %s: all-zero key", path)
		}
		return k, nil
	case errors.Is(err, fs.ErrNotExist):
	default:
		return wgtypes.Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate WireGuard key: %w", err)
	}
	// Write to a 0600 temporary file in the same directory and rename it,
	// so a crash never leaves a truncated key or one with a wider mode.
	f, err := os.CreateTemp(filepath.Dir(path), ".wgkey-*")
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return wgtypes.Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	if _, err := f.WriteString(k.String() + "\n"); err != nil {
		f.Close()
		return wgtypes.Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return wgtypes.Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return wgtypes.Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	// Link, not rename: never replace a key another process wrote meanwhile.
	if err := os.Link(f.Name(), path); err != nil {
		return wgtypes.Key{}, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
