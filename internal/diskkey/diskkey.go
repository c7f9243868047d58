// Package diskkey derives a state disk's two secrets from the cluster master
// secret: keyd's disk key (LUKS keyslot 0) and the owner's recovery key
// (keyslot 1), and renders the recovery key as the passphrase a person types.
//
// It is pure derivation, shared so that keyd (which hands both to an
// attested node) and the owner's verifier (which prints the recovery
// passphrase from the offline master secret) cannot disagree. It holds no
// secret, does no I/O and makes no trust decision (docs/keyd.md §Keys).
package diskkey

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"regexp"
)

// Sizes. MasterSize equals keyd/api.MasterSecretSize and DiskKeySize
// keyd/api.DiskKeySize (keyd's tests check both).
const (
	MasterSize = 32
	// DiskKeySize: aes-xts-plain64 with a 512-bit volume key, keyslot
	// key of the same length.
	DiskKeySize = 64
	// RecoveryKeySize: 256 bits, the strength of the rest of the system;
	// argon2id stretches it further in the keyslot.
	RecoveryKeySize = 32
	// PassphraseLen is the length of Passphrase's text: 52 base32
	// characters in 13 groups of 4, joined by 12 hyphens.
	PassphraseLen = 64
)

// HKDF info prefixes (RFC 5869 §3.2: info binds the output to its use).
// They differ at byte 13 ('/' against '-'), so no disk-key info string is
// a recovery-key info string, whatever node ID follows: the two keys of a
// disk are independent.
const (
	DiskInfo     = "palisade/disk/v1"
	RecoveryInfo = "palisade/disk-recovery/v1"
)

var (
	// nodeRE is internal/attest's node ID rule (claims.node_id).
	nodeRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)
	// uuidRE is a LUKS UUID as cryptsetup prints it and nodes claim it.
	uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
)

// Disk derives the 64-byte LUKS key of the disk uuid of node:
// HKDF-SHA256 with salt = cluster ID and info = DiskInfo ‖ node ID ‖ LUKS
// UUID. The UUID has a fixed length (36) and comes last, so the info
// string splits back into exactly one (node, uuid) pair: distinct disks
// never share a key.
func Disk(master []byte, clusterID, nodeID, uuid string) ([]byte, error) {
	return derive(master, clusterID, nodeID, uuid, DiskInfo, DiskKeySize)
}

// Recovery derives the owner's 32-byte recovery key of the disk uuid of
// node: HKDF-SHA256 with salt = cluster ID and info = RecoveryInfo ‖ node
// ID ‖ LUKS UUID. The owner keeps the master secret offline (`verifier
// init`), so it can re-derive this key for any disk without keyd.
func Recovery(master []byte, clusterID, nodeID, uuid string) ([]byte, error) {
	return derive(master, clusterID, nodeID, uuid, RecoveryInfo, RecoveryKeySize)
}

func derive(master []byte, clusterID, nodeID, uuid, label string, n int) ([]byte, error) {
	if len(master) != MasterSize {
		return nil, fmt.Errorf("master secret: %d bytes, want %d", len(master), MasterSize)
	}
	if clusterID == "" {
		return nil, errors.New("cluster ID: empty")
	}
	if !nodeRE.MatchString(nodeID) {
		return nil, fmt.Errorf("node ID %q: want 1-63 of [a-z0-9.-], starting and ending alphanumeric", nodeID)
	}
	if !uuidRE.MatchString(uuid) {
		return nil, fmt.Errorf("disk uuid %q: want a lower-case UUID (36 characters)", uuid)
	}
	return hkdf.Key(sha256.New, master, []byte(clusterID), label+nodeID+uuid, n)
}

// lowerBase32 is RFC 4648 §6's alphabet in lower case: no 0, 1, 8 or 9,
// so nothing reads as O, l or B; easy to type from a printout.
var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Passphrase renders a recovery key as the text that is the LUKS
// passphrase of keyslot 1 (exactly these bytes, no newline): lower-case
// base32 of the 32 bytes, 52 characters, in groups of 4 joined by '-',
// e.g. "mfrg-gzdf-…-aa". The hyphens are part of the passphrase, so what
// `verifier disk-recovery-key` prints is typed as it is. The result is a
// byte slice so the caller can zero it.
func Passphrase(recovery []byte) ([]byte, error) {
	if len(recovery) != RecoveryKeySize {
		return nil, fmt.Errorf("recovery key: %d bytes, want %d", len(recovery), RecoveryKeySize)
	}
	enc := make([]byte, lowerBase32.EncodedLen(len(recovery)))
	lowerBase32.Encode(enc, recovery)
	out := make([]byte, 0, PassphraseLen)
	for i := 0; i < len(enc); i += 4 {
		if i > 0 {
			out = append(out, '-')
		}
		out = append(out, enc[i:min(i+4, len(enc))]...)
	}
	clear(enc)
	return out, nil
}
