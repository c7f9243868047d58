package attestd

import (
	"errors"
	"fmt"
	"github.com/palisade-cc/palisade/internal/atomicfile"
	"net"
	"os"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// productUUIDPath is the SMBIOS system UUID (SMBIOS 3.x §7.2.1, type 1),
// as Linux exposes it.
const productUUIDPath = "/sys/class/dmi/id/product_uuid"

// NodeID returns the node's identity: the SMBIOS system UUID in lower case,
// or, where firmware sets none (all zeros, all ones, absent), the first
// non-loopback interface's MAC with dashes. Both are stable across boots of
// the same machine and fit attest.Claims' node_id form. They are not
// secret and not proof of anything: keyd binds the ID to the hardware the
// evidence names.
func NodeID(readFile func(string) ([]byte, error), ifaces func() ([]net.Interface, error)) (string, error) {
	if b, err := readFile(productUUIDPath); err == nil {
		if id, ok := uuidID(string(b)); ok {
			return id, nil
		}
	}
	is, err := ifaces()
	if err != nil {
		return "", fmt.Errorf("node id: no SMBIOS UUID and no interfaces: %w", err)
	}
	for _, i := range is {
		if i.Flags&net.FlagLoopback != 0 || len(i.HardwareAddr) != 6 || allBytes(i.HardwareAddr, 0) {
			continue
		}
		return strings.ReplaceAll(i.HardwareAddr.String(), ":", "-"), nil
	}
	return "", errors.New("node id: no SMBIOS UUID and no interface with a MAC address")
}

// uuidID accepts a UUID in the 8-4-4-4-12 form that is neither nil nor max
// (RFC 9562 §5.9, §5.10), which firmware uses for "not set".
func uuidID(s string) (string, bool) {
	s = strings.ToLower(strings.TrimSpace(s))
	if len(s) != 36 {
		return "", false
	}
	hexDigits := 0
	for i, c := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return "", false
			}
		case c >= '0' && c <= '9' || c >= 'a' && c <= 'f':
			hexDigits++
		default:
			return "", false
		}
	}
	if h := strings.ReplaceAll(s, "-", ""); h == strings.Repeat("0", 32) || h == strings.Repeat("f", 32) {
		return "", false
	}
	return s, hexDigits == 32
}

func allBytes(b []byte, v byte) bool {
	for _, x := range b {
		if x != v {
			return false
		}
	}
	return true
}

// newWireGuardKey makes the node's WireGuard key for this boot and writes
// the private part for meshd (meshd.LoadOrCreateKey's format: base64 and a
// newline, mode 0600). Only the public key leaves the node, as a claim the
// evidence commits to.
func newWireGuardKey(path string) (wgtypes.Key, error) {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("generate WireGuard key: %w", err)
	}
	if err := writeFileAtomic(path, []byte(k.String()+"\n"), 0o600); err != nil {
		return wgtypes.Key{}, fmt.Errorf("WireGuard key %s: %w", path, err)
	}
	return k, nil
}

// writeFileAtomic is atomicfile.Write: a reader never sees a partial file
// or one with a wider mode.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	return atomicfile.Write(path, data, perm)
}
