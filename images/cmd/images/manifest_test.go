package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest"
	"github.com/palisade-cc/palisade/internal/manifest/rekortest"
)

// imageDir writes a build output directory: the artifacts and references.json.
func imageDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for i, n := range artifacts {
		if err := os.WriteFile(filepath.Join(dir, n), bytes.Repeat([]byte{byte(i + 1)}, 100+i), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pcr := func(b byte) attest.HexBytes { return bytes.Repeat([]byte{b}, 32) }
	refs := []attest.Reference{{Profile: "tpm-uefi-sb-off-production", Platform: attest.PlatformTPM,
		TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{4: pcr(4), 9: pcr(9), 11: pcr(11)}}}}
	b, _ := json.Marshal(refs)
	if err := os.WriteFile(filepath.Join(dir, "references.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

type world struct {
	dir, key, pub, logKey string
	log                   *rekortest.Log
	url                   string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{dir: imageDir(t), log: rekortest.NewLog()}
	keys := t.TempDir()
	if err := cmdKeygen([]string{"--out", filepath.Join(keys, "m")}); err != nil {
		t.Fatal(err)
	}
	w.key, w.pub = filepath.Join(keys, "m.pem"), filepath.Join(keys, "m.pub.pem")
	w.logKey = filepath.Join(keys, "rekor.pub.pem")
	if err := os.WriteFile(w.logKey, w.log.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(w.log.Handler(false))
	t.Cleanup(srv.Close)
	w.url = srv.URL
	return w
}

func (w *world) sign(t *testing.T, sv string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "manifest.dsse")
	if err := cmdSign([]string{"--key", w.key, "--dir", w.dir, "--security-version", sv, "--out", out}); err != nil {
		t.Fatal(err)
	}
	return out
}

func (w *world) publish(t *testing.T, bundle string, extra ...string) error {
	t.Helper()
	var so, se bytes.Buffer
	args := append([]string{"--rekor", w.url, "--log-key", w.logKey, "--pub", w.pub}, extra...)
	err := cmdPublish(context.Background(), append(args, bundle), &so, &se)
	t.Logf("publish: %v\n%s%s", err, se.String(), so.String())
	return err
}

func verify(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var so, se bytes.Buffer
	err := cmdVerify(args, &so, &se)
	return so.String(), err
}

func TestPublishThenVerify(t *testing.T) {
	w := newWorld(t)
	b := w.sign(t, "3")
	if err := w.publish(t, b); err != nil {
		t.Fatal(err)
	}
	out, err := verify(t, "--pub", w.pub, "--log-key", w.logKey, "--dir", w.dir, "--last-accepted", "3", b)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "OK image dev security version 3") || !strings.Contains(out, "verified offline with the pinned log key") || strings.Contains(out, "WARNING") {
		t.Fatalf("output:\n%s", out)
	}
	// Publishing again finds the logged entry (Rekor answers 409) and
	// writes the same verified proof.
	before, _ := os.ReadFile(b)
	if err := w.publish(t, b); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(b); !bytes.Equal(before[:bytes.Index(before, []byte("log_proof"))], after[:bytes.Index(after, []byte("log_proof"))]) {
		t.Fatal("republishing changed the envelope")
	}
	if _, err := verify(t, "--pub", w.pub, "--log-key", w.logKey, b); err != nil {
		t.Fatal(err)
	}
}

func TestPublishWaitsForInclusion(t *testing.T) {
	w := newWorld(t)
	srv := httptest.NewServer(w.log.Handler(true))
	defer srv.Close()
	w.url = srv.URL
	b := w.sign(t, "1")
	if err := w.publish(t, b); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, "--pub", w.pub, "--log-key", w.logKey, b); err != nil {
		t.Fatal(err)
	}
}

func TestPublishFails(t *testing.T) {
	t.Run("log cannot be reached", func(t *testing.T) {
		w := newWorld(t)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		w.url = "http://" + ln.Addr().String()
		ln.Close()
		b := w.sign(t, "1")
		before, _ := os.ReadFile(b)
		if err := w.publish(t, b); err == nil || !strings.Contains(err.Error(), "create entry") {
			t.Fatalf("err = %v", err)
		}
		if after, _ := os.ReadFile(b); !bytes.Equal(before, after) {
			t.Fatal("bundle rewritten after a failed publish")
		}
	})
	t.Run("proof by a log key that is not pinned", func(t *testing.T) {
		w := newWorld(t)
		other := rekortest.NewLog()
		if err := os.WriteFile(w.logKey, other.PublicKeyPEM(), 0o644); err != nil {
			t.Fatal(err)
		}
		b := w.sign(t, "1")
		before, _ := os.ReadFile(b)
		err := w.publish(t, b)
		if !errors.Is(err, manifest.ErrLogKey) || !strings.Contains(err.Error(), "does not verify against the pinned log key") {
			t.Fatalf("err = %v", err)
		}
		if after, _ := os.ReadFile(b); !bytes.Equal(before, after) {
			t.Fatal("bundle rewritten after a failed publish")
		}
	})
	t.Run("bundle not signed by --pub", func(t *testing.T) {
		w := newWorld(t)
		b := w.sign(t, "1")
		w2 := newWorld(t)
		w.pub = w2.pub
		if err := w.publish(t, b); !errors.Is(err, manifest.ErrSignature) {
			t.Fatalf("err = %v", err)
		}
		if w.log.Size() != 0 {
			t.Fatal("an unverifiable manifest reached the log")
		}
	})
}

func TestVerifyDenies(t *testing.T) {
	w := newWorld(t)
	good := w.sign(t, "3")
	if err := w.publish(t, good); err != nil {
		t.Fatal(err)
	}
	other := w.sign(t, "4")
	if err := w.publish(t, other); err != nil {
		t.Fatal(err)
	}
	otherKeys := t.TempDir()
	if err := cmdKeygen([]string{"--out", filepath.Join(otherKeys, "o")}); err != nil {
		t.Fatal(err)
	}
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherLog := filepath.Join(otherKeys, "rekor.pub.pem")
	os.WriteFile(otherLog, rekortest.PublicKeyPEM(ek.Public()), 0o644)

	base := func(bundle string) []string {
		return []string{"--pub", w.pub, "--log-key", w.logKey, "--dir", w.dir, "--last-accepted", "3", bundle}
	}
	// A copy of the image directory and the bundle per case.
	copyDir := func(t *testing.T) (string, string) {
		d := t.TempDir()
		for _, n := range append([]string{"references.json"}, artifacts...) {
			b, _ := os.ReadFile(filepath.Join(w.dir, n))
			os.WriteFile(filepath.Join(d, n), b, 0o644)
		}
		b, _ := os.ReadFile(good)
		p := filepath.Join(d, "manifest.dsse")
		os.WriteFile(p, b, 0o644)
		return d, p
	}
	if _, err := verify(t, base(good)...); err != nil {
		t.Fatalf("baseline: %v", err)
	}
	for _, n := range artifacts {
		t.Run("flipped byte in "+n, func(t *testing.T) {
			d, p := copyDir(t)
			b, _ := os.ReadFile(filepath.Join(d, n))
			b[len(b)/2] ^= 1
			os.WriteFile(filepath.Join(d, n), b, 0o644)
			args := base(p)
			args[5] = d
			_, err := verify(t, args...)
			if !errors.Is(err, manifest.ErrFileDigest) || !strings.Contains(err.Error(), "file "+n) {
				t.Fatalf("err = %v", err)
			}
		})
	}
	t.Run("flipped byte in the bundle's payload", func(t *testing.T) {
		_, p := copyDir(t)
		var b manifest.Bundle
		raw, _ := os.ReadFile(p)
		json.Unmarshal(raw, &b)
		b.DSSE.Payload[len(b.DSSE.Payload)/2] ^= 1
		raw, _ = json.Marshal(&b)
		os.WriteFile(p, raw, 0o644)
		if _, err := verify(t, base(p)...); !errors.Is(err, manifest.ErrSignature) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("another signing key", func(t *testing.T) {
		args := base(good)
		args[1] = filepath.Join(otherKeys, "o.pub.pem")
		if _, err := verify(t, args...); !errors.Is(err, manifest.ErrSignature) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("security version below last accepted", func(t *testing.T) {
		args := base(good)
		args[7] = "4"
		if _, err := verify(t, args...); !errors.Is(err, manifest.ErrRollback) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("Rekor proof of another entry", func(t *testing.T) {
		_, p := copyDir(t)
		var g, o manifest.Bundle
		raw, _ := os.ReadFile(p)
		json.Unmarshal(raw, &g)
		raw, _ = os.ReadFile(other)
		json.Unmarshal(raw, &o)
		g.LogProof = o.LogProof
		raw, _ = json.Marshal(&g)
		os.WriteFile(p, raw, 0o644)
		if _, err := verify(t, base(p)...); !errors.Is(err, manifest.ErrLogEntry) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("log key not pinned", func(t *testing.T) {
		args := base(good)
		args[3] = otherLog
		if _, err := verify(t, args...); !errors.Is(err, manifest.ErrLogKey) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no log proof", func(t *testing.T) {
		unpublished := w.sign(t, "3")
		if _, err := verify(t, base(unpublished)...); !errors.Is(err, manifest.ErrNoLogProof) {
			t.Fatalf("err = %v", err)
		}
		// --no-tlog accepts it and says so.
		out, err := verify(t, "--pub", w.pub, "--no-tlog", unpublished)
		if err != nil || !strings.Contains(out, "WARNING: no transparency-log proof (--no-tlog)") {
			t.Fatalf("--no-tlog: %v\n%s", err, out)
		}
	})
	t.Run("neither --log-key nor --no-tlog", func(t *testing.T) {
		if _, err := verify(t, "--pub", w.pub, good); err == nil {
			t.Fatal("verified without deciding about the log")
		}
	})
}
