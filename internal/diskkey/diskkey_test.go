package diskkey

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"strings"
	"testing"
)

const (
	cluster = "test-cluster"
	node    = "node-1"
	uuidA   = "0f0e0d0c-0b0a-4908-8706-050403020100"
	uuidB   = "11111111-2222-4333-8444-555555555555"
)

func master() []byte {
	m := make([]byte, MasterSize)
	for i := range m {
		m[i] = byte(i)
	}
	return m
}

// rfc5869 is HKDF-SHA256 written out from RFC 5869 §2.2-2.3 with
// crypto/hmac, independent of crypto/hkdf.
func rfc5869(ikm, salt []byte, info string, n int) []byte {
	ext := hmac.New(sha256.New, salt)
	ext.Write(ikm)
	prk := ext.Sum(nil)
	var out, t []byte
	for i := byte(1); len(out) < n; i++ {
		h := hmac.New(sha256.New, prk)
		h.Write(t)
		h.Write([]byte(info))
		h.Write([]byte{i})
		t = h.Sum(nil)
		out = append(out, t...)
	}
	return out[:n]
}

func TestDerivationIsDocumentedHKDF(t *testing.T) {
	rec, err := Recovery(master(), cluster, node, uuidA)
	if err != nil {
		t.Fatal(err)
	}
	if want := rfc5869(master(), []byte(cluster), "palisade/disk-recovery/v1"+node+uuidA, 32); !bytes.Equal(rec, want) {
		t.Errorf("recovery key %x, want HKDF-SHA256(salt=cluster, info=palisade/disk-recovery/v1‖node‖uuid) %x", rec, want)
	}
	dk, err := Disk(master(), cluster, node, uuidA)
	if err != nil {
		t.Fatal(err)
	}
	if want := rfc5869(master(), []byte(cluster), "palisade/disk/v1"+node+uuidA, 64); !bytes.Equal(dk, want) {
		t.Errorf("disk key %x, want %x", dk, want)
	}
	// Pinned: a change of the derivation would lock owners out of disks
	// formatted before it.
	if got := hex.EncodeToString(rec); got != goldenRecovery {
		t.Errorf("recovery key %s, pinned %s", got, goldenRecovery)
	}
	p, err := Passphrase(rec)
	if err != nil {
		t.Fatal(err)
	}
	if string(p) != goldenPassphrase {
		t.Errorf("passphrase %s, pinned %s", p, goldenPassphrase)
	}
}

const (
	goldenRecovery   = "bbf4de36f719dca934c2b2be0e446b4ecbb587a02854bad602152d1d9afae64d"
	goldenPassphrase = "xp2n-4nxx-dhok-sngc-wk7a-4rdl-j3f3-lb5a-fbkl-vvqc-cuwr-3gx2-4zgq"
)

// Each input changes the recovery key; it is never the disk key or a part
// of it.
func TestRecoveryKeyBinding(t *testing.T) {
	base, err := Recovery(master(), cluster, node, uuidA)
	if err != nil {
		t.Fatal(err)
	}
	other := master()
	other[31] ^= 1
	for name, f := range map[string]func() ([]byte, error){
		"another node":    func() ([]byte, error) { return Recovery(master(), cluster, "node-2", uuidA) },
		"another uuid":    func() ([]byte, error) { return Recovery(master(), cluster, node, uuidB) },
		"another cluster": func() ([]byte, error) { return Recovery(master(), "other-cluster", node, uuidA) },
		"another master":  func() ([]byte, error) { return Recovery(other, cluster, node, uuidA) },
		// Node and UUID boundaries: "node-1"+uuid against "node-"+"1"…
		// is impossible (fixed UUID length), but a node ID that ends like
		// another's prefix must not collide either.
		"node suffix": func() ([]byte, error) { return Recovery(master(), cluster, "node-10", uuidA) },
	} {
		k, err := f()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if bytes.Equal(k, base) {
			t.Errorf("%s: same recovery key", name)
		}
	}
	dk, err := Disk(master(), cluster, node, uuidA)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(dk, base[:16]) || bytes.Equal(dk[:32], base) {
		t.Error("recovery key overlaps the disk key of the same disk")
	}
	if strings.HasPrefix(DiskInfo, RecoveryInfo) || strings.HasPrefix(RecoveryInfo, DiskInfo) {
		t.Error("one info label is a prefix of the other: not domain-separated")
	}
}

func TestBadInputs(t *testing.T) {
	for name, f := range map[string]func() ([]byte, error){
		"short master":    func() ([]byte, error) { return Recovery(master()[:31], cluster, node, uuidA) },
		"empty cluster":   func() ([]byte, error) { return Recovery(master(), "", node, uuidA) },
		"upper-case node": func() ([]byte, error) { return Recovery(master(), cluster, "Node-1", uuidA) },
		"empty node":      func() ([]byte, error) { return Recovery(master(), cluster, "", uuidA) },
		"upper-case uuid": func() ([]byte, error) { return Recovery(master(), cluster, node, strings.ToUpper(uuidA)) },
		"uuid without '-'": func() ([]byte, error) {
			return Disk(master(), cluster, node, strings.ReplaceAll(uuidA, "-", "")+"0000")
		},
		"braced uuid": func() ([]byte, error) { return Disk(master(), cluster, node, "{"+uuidA[:34]+"}") },
	} {
		if k, err := f(); err == nil {
			t.Errorf("%s: derived %x, want an error", name, k)
		}
	}
	for _, n := range []int{0, 31, 33, 64} {
		if _, err := Passphrase(make([]byte, n)); err == nil || !strings.Contains(err.Error(), "recovery key") {
			t.Errorf("Passphrase of %d bytes: %v, want an error naming the recovery key", n, err)
		}
	}
}

func TestPassphraseFormat(t *testing.T) {
	key := bytes.Repeat([]byte{0xff}, RecoveryKeySize)
	p, err := Passphrase(key)
	if err != nil {
		t.Fatal(err)
	}
	if len(p) != PassphraseLen {
		t.Fatalf("passphrase %q: %d characters, want %d", p, len(p), PassphraseLen)
	}
	groups := strings.Split(string(p), "-")
	if len(groups) != 13 {
		t.Fatalf("passphrase %q: %d groups, want 13", p, len(groups))
	}
	for _, g := range groups {
		if len(g) != 4 || strings.Trim(g, "abcdefghijklmnopqrstuvwxyz234567") != "" {
			t.Errorf("group %q: want 4 of [a-z2-7]", g)
		}
	}
	back, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(strings.ToUpper(strings.Join(groups, "")))
	if err != nil || !bytes.Equal(back, key) {
		t.Errorf("passphrase decodes to %x (%v), want %x", back, err, key)
	}
}

// FuzzDerive: node IDs and UUIDs come from a node's claims; nothing may
// panic, and what derives is a well-formed key and passphrase.
func FuzzDerive(f *testing.F) {
	f.Add(master(), cluster, node, uuidA)
	f.Add([]byte{}, "", "", "")
	f.Add(master(), "c", "a", strings.ToUpper(uuidB))
	f.Fuzz(func(t *testing.T, m []byte, c, n, u string) {
		rec, err := Recovery(m, c, n, u)
		if err != nil {
			return
		}
		dk, err := Disk(m, c, n, u)
		if err != nil || len(dk) != DiskKeySize || len(rec) != RecoveryKeySize {
			t.Fatalf("disk key %d bytes (%v), recovery %d", len(dk), err, len(rec))
		}
		p, err := Passphrase(rec)
		if err != nil || len(p) != PassphraseLen {
			t.Fatalf("passphrase %q: %v", p, err)
		}
	})
}
