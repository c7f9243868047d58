package keyd

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/palisade-cc/palisade/internal/diskkey"
)

// DiskKey derives the 64-byte LUKS key (aes-xts-plain64, 512-bit) of the
// disk uuid of node: HKDF-SHA256 (RFC 5869) with salt = cluster ID and
// info = "palisade/disk/v1" ‖ node ID ‖ LUKS UUID (internal/diskkey.Disk,
// docs/keyd.md §Keys).
func DiskKey(master []byte, clusterID, nodeID, uuid string) ([]byte, error) {
	return diskkey.Disk(master, clusterID, nodeID, uuid)
}

// RecoveryKey derives the owner's 32-byte recovery key of the same disk:
// HKDF-SHA256 with salt = cluster ID and info = "palisade/disk-recovery/v1"
// ‖ node ID ‖ LUKS UUID (internal/diskkey.Recovery). Its own label keeps
// it independent of the disk key; the owner re-derives it offline with
// `verifier disk-recovery-key` from the master secret.
func RecoveryKey(master []byte, clusterID, nodeID, uuid string) ([]byte, error) {
	return diskkey.Recovery(master, clusterID, nodeID, uuid)
}

// commitment is what keyd stores to recognise the master secret again
// (recover, replica join) without storing the secret: SHA-256 over a domain,
// the cluster ID and the secret. The secret is 32 random bytes, so the hash
// reveals nothing a guess could confirm.
func commitment(clusterID string, master []byte) []byte {
	h := sha256.New()
	h.Write([]byte("palisade.keyd.master-commitment.v1"))
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(clusterID))))
	h.Write([]byte(clusterID))
	h.Write(master)
	return h.Sum(nil)
}

// sealAAD binds a sealed master secret to its cluster.
func sealAAD(clusterID string) []byte {
	return append([]byte("palisade.keyd.seal.v1\x00"), clusterID...)
}

// seal encrypts master with AES-256-GCM under key (the operator's seal key).
func seal(key []byte, clusterID string, master []byte) ([]byte, error) {
	g, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, g.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return g.Seal(nonce, nonce, master, sealAAD(clusterID)), nil
}

// unseal reverses seal; a wrong key or a sealed blob of another cluster fails.
func unseal(key []byte, clusterID string, sealed []byte) ([]byte, error) {
	g, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(sealed) < g.NonceSize()+g.Overhead() {
		return nil, errors.New("sealed master secret: truncated")
	}
	m, err := g.Open(nil, sealed[:g.NonceSize()], sealed[g.NonceSize():], sealAAD(clusterID))
	if err != nil {
		return nil, errors.New("sealed master secret: does not open with the seal key")
	}
	return m, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("seal key: %d bytes, want 32", len(key))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

// secret holds the master secret in memory only.
type secret struct {
	mu     sync.RWMutex
	master []byte
}

func (s *secret) get() []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.master
}

// set installs m unless a secret is already held; a second, different
// secret is an error (never silently replaced).
func (s *secret) set(m []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.master != nil {
		if subtle.ConstantTimeCompare(s.master, m) == 1 {
			return nil
		}
		return errors.New("a different master secret is already loaded")
	}
	s.master = append([]byte(nil), m...)
	return nil
}

// equalCT compares secrets and commitments in constant time.
func equalCT(a, b []byte) bool { return len(a) == len(b) && subtle.ConstantTimeCompare(a, b) == 1 }
