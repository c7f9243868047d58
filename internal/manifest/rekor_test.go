package manifest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sigstore/rekor/pkg/util"
	"github.com/sigstore/sigstore/pkg/signature"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/manifest/rekortest"
)

// logged is a signed bundle recorded in log: the bundle without proof, the
// envelope bytes, the entry index.
type logged struct {
	bundle *Bundle
	env    []byte
	index  int
}

func logBundle(t testing.TB, log *rekortest.Log, key crypto.Signer, sv uint64) logged {
	t.Helper()
	b, err := Sign(testManifest(t, sv), key)
	if err != nil {
		t.Fatal(err)
	}
	env, err := EnvelopeBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	i, err := log.Add(env, rekortest.PublicKeyPEM(key.Public()))
	if err != nil {
		t.Fatal(err)
	}
	return logged{b, env, i}
}

func withProof(t testing.TB, b *Bundle, proof []byte) []byte {
	t.Helper()
	c := *b
	c.LogProof = proof
	return encode(t, &c)
}

func entry(t testing.TB, log *rekortest.Log, i int) []byte {
	t.Helper()
	p, err := log.Entry(i)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// editProof decodes a proof into a generic map, lets f change it, re-encodes.
func editProof(t testing.TB, p []byte, f func(m map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func inclusion(m map[string]any) map[string]any {
	return m["verification"].(map[string]any)["inclusionProof"].(map[string]any)
}

func p256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// signCheckpoint signs a checkpoint over (size, root) with signer, as
// rekor-server does.
func signCheckpoint(t testing.TB, signer crypto.Signer, size uint64, rootHex string) string {
	t.Helper()
	sv, err := signature.LoadSignerVerifier(signer, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := hex.DecodeString(rootHex)
	cp, err := util.CreateAndSignCheckpoint(context.Background(), "rekor.test", 1, size, root, sv)
	if err != nil {
		t.Fatal(err)
	}
	return string(cp)
}

type rekorFixture struct {
	log  *rekortest.Log
	key  crypto.Signer
	a, b logged
	opts Options
}

// newRekorFixture logs two manifests among other entries, so inclusion
// proofs have several levels.
func newRekorFixture(t testing.TB) *rekorFixture {
	t.Helper()
	f := &rekorFixture{log: rekortest.NewLog(), key: edKey(t)}
	for i := 0; i < 3; i++ {
		logBundle(t, f.log, edKey(t), 1)
	}
	f.a = logBundle(t, f.log, f.key, 4)
	logBundle(t, f.log, edKey(t), 1)
	f.b = logBundle(t, f.log, f.key, 5)
	logBundle(t, f.log, edKey(t), 1)
	f.opts = Options{Keys: []crypto.PublicKey{f.key.Public()},
		Log: &RekorVerifier{LogKey: f.log.PublicKey(), ManifestKeys: []crypto.PublicKey{f.key.Public()}}}
	return f
}

func TestRekorProofVerifies(t *testing.T) {
	f := newRekorFixture(t)
	for _, l := range []logged{f.a, f.b} {
		res, err := Verify(withProof(t, l.bundle, entry(t, f.log, l.index)), f.opts)
		if err != nil {
			t.Fatalf("entry %d: %v", l.index, err)
		}
		if res.Log != LogVerified {
			t.Fatalf("log status %q", res.Log)
		}
	}
	// An ECDSA P-256 manifest key is recorded and verified the same way.
	ek := p256(t)
	l := logBundle(t, f.log, ek, 6)
	o := Options{Keys: []crypto.PublicKey{ek.Public()}, Log: &RekorVerifier{LogKey: f.log.PublicKey(), ManifestKeys: []crypto.PublicKey{ek.Public()}}}
	if _, err := Verify(withProof(t, l.bundle, entry(t, f.log, l.index)), o); err != nil {
		t.Fatalf("P-256 manifest key: %v", err)
	}
	// Every tree size and leaf position of a small tree (RFC 6962 paths of
	// every shape).
	log := rekortest.NewLog()
	var ls []logged
	for n := 0; n < 9; n++ {
		ls = append(ls, logBundle(t, log, f.key, uint64(n)))
		v := &RekorVerifier{LogKey: log.PublicKey(), ManifestKeys: []crypto.PublicKey{f.key.Public()}}
		for _, l := range ls {
			if _, err := v.Verify(l.env, entry(t, log, l.index)); err != nil {
				t.Fatalf("tree size %d, leaf %d: %v", n+1, l.index, err)
			}
		}
	}
}

func TestRekorProofDenied(t *testing.T) {
	f := newRekorFixture(t)
	good := entry(t, f.log, f.a.index)
	other := rekortest.NewLog()
	otherKey := p256(t)
	cases := []struct {
		name   string
		proof  func() []byte
		bundle func() *Bundle // default: f.a.bundle
		opts   func(o *Options)
		want   error
		class  attest.Class
	}{
		{name: "proof of another entry", proof: func() []byte { return entry(t, f.log, f.b.index) }, want: ErrLogEntry, class: attest.ClassChain},
		{name: "envelope with an added signature", proof: func() []byte {
			// Same payload, same pinned signature, one more signature:
			// only the envelope hash tells the logged envelope apart.
			return good
		}, bundle: func() *Bundle {
			c := *f.a.bundle
			c.DSSE.Signatures = append(c.DSSE.Signatures[:1:1], Signature{KeyID: "extra", Sig: make([]byte, 64)})
			return &c
		}, want: ErrLogEntry, class: attest.ClassChain},
		{name: "log key not pinned", proof: func() []byte {
			// The same envelope, recorded in another log.
			i, err := other.Add(f.a.env, rekortest.PublicKeyPEM(f.key.Public()))
			if err != nil {
				t.Fatal(err)
			}
			return entry(t, other, i)
		}, want: ErrLogKey, class: attest.ClassChain},
		{name: "pinned log key is another", proof: func() []byte { return good },
			opts: func(o *Options) { o.Log.(*RekorVerifier).LogKey = otherKey.Public() }, want: ErrLogKey, class: attest.ClassChain},
		{name: "tampered SET", proof: func() []byte {
			return editProof(t, good, func(m map[string]any) {
				v := m["verification"].(map[string]any)
				set, _ := base64.StdEncoding.DecodeString(v["signedEntryTimestamp"].(string))
				set[len(set)-3] ^= 1
				v["signedEntryTimestamp"] = base64.StdEncoding.EncodeToString(set)
			})
		}, want: ErrLogSET, class: attest.ClassChain},
		{name: "integratedTime changed", proof: func() []byte {
			return editProof(t, good, func(m map[string]any) { m["integratedTime"] = m["integratedTime"].(float64) - 3600 })
		}, want: ErrLogSET, class: attest.ClassChain},
		{name: "logIndex changed", proof: func() []byte {
			return editProof(t, good, func(m map[string]any) { m["logIndex"] = m["logIndex"].(float64) + 1 })
		}, want: ErrLogSET, class: attest.ClassChain},
		{name: "checkpoint by another key", proof: func() []byte {
			return editProof(t, good, func(m map[string]any) {
				ip := inclusion(m)
				ip["checkpoint"] = signCheckpoint(t, otherKey, uint64(ip["treeSize"].(float64)), ip["rootHash"].(string))
			})
		}, want: ErrLogCheckpoint, class: attest.ClassChain},
		{name: "checkpoint of another tree size", proof: func() []byte {
			return editProof(t, good, func(m map[string]any) {
				ip := inclusion(m)
				ip["checkpoint"] = signCheckpoint(t, f.log.Signer, uint64(ip["treeSize"].(float64))+1, ip["rootHash"].(string))
			})
		}, want: ErrLogCheckpoint, class: attest.ClassChain},
		{name: "checkpoint of another root", proof: func() []byte {
			return editProof(t, good, func(m map[string]any) {
				ip := inclusion(m)
				ip["checkpoint"] = signCheckpoint(t, f.log.Signer, uint64(ip["treeSize"].(float64)), strings.Repeat("ab", 32))
			})
		}, want: ErrLogCheckpoint, class: attest.ClassChain},
		{name: "inclusion path hash changed", proof: func() []byte {
			return editProof(t, good, func(m map[string]any) {
				h := inclusion(m)["hashes"].([]any)
				b, _ := hex.DecodeString(h[0].(string))
				b[0] ^= 1
				h[0] = hex.EncodeToString(b)
			})
		}, want: ErrLogInclusion, class: attest.ClassChain},
		{name: "inclusion for another leaf index", proof: func() []byte {
			return editProof(t, good, func(m map[string]any) { inclusion(m)["logIndex"] = inclusion(m)["logIndex"].(float64) - 1 })
		}, want: ErrLogInclusion, class: attest.ClassChain},
		{name: "entry signed by a manifest key the log verifier does not pin", proof: func() []byte { return good },
			opts: func(o *Options) {
				o.Log.(*RekorVerifier).ManifestKeys = []crypto.PublicKey{edKey(t).Public()}
			}, want: ErrLogEntry, class: attest.ClassChain},
		{name: "entry body with another payload hash", proof: func() []byte {
			return entry(t, f.log, f.log.AddBody(editBody(t, good, func(spec map[string]any) {
				spec["payloadHash"].(map[string]any)["value"] = strings.Repeat("0", 64)
			})))
		}, want: ErrLogEntry, class: attest.ClassChain},
		{name: "entry body with another signature", proof: func() []byte {
			return entry(t, f.log, f.log.AddBody(editBody(t, good, func(spec map[string]any) {
				s := spec["signatures"].([]any)[0].(map[string]any)
				sig, _ := base64.StdEncoding.DecodeString(s["signature"].(string))
				sig[0] ^= 1
				s["signature"] = base64.StdEncoding.EncodeToString(sig)
			})))
		}, want: ErrLogEntry, class: attest.ClassChain},
		{name: "entry body with another verifier key", proof: func() []byte {
			return entry(t, f.log, f.log.AddBody(editBody(t, good, func(spec map[string]any) {
				s := spec["signatures"].([]any)[0].(map[string]any)
				s["verifier"] = base64.StdEncoding.EncodeToString(rekortest.PublicKeyPEM(edKey(t).Public()))
			})))
		}, want: ErrLogEntry, class: attest.ClassChain},
		{name: "entry from the future", proof: func() []byte { return good },
			opts: func(o *Options) {
				o.Log.(*RekorVerifier).Now = func() time.Time { return time.Now().Add(-time.Hour) }
			}, want: ErrLogSET, class: attest.ClassChain},
		{name: "hashedrekord entry", proof: func() []byte {
			return editProof(t, good, func(m map[string]any) {
				b, _ := base64.StdEncoding.DecodeString(m["body"].(string))
				m["body"] = base64.StdEncoding.EncodeToString([]byte(strings.Replace(string(b), `"kind":"dsse"`, `"kind":"hashedrekord"`, 1)))
			})
		}, want: ErrMalformed, class: attest.ClassMalformed},
		{name: "no checkpoint", proof: func() []byte {
			return editProof(t, good, func(m map[string]any) { delete(inclusion(m), "checkpoint") })
		}, want: ErrMalformed, class: attest.ClassMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := f.opts
			rv := *f.opts.Log.(*RekorVerifier)
			o.Log = &rv
			if c.opts != nil {
				c.opts(&o)
			}
			b := f.a.bundle
			if c.bundle != nil {
				b = c.bundle()
			}
			_, err := Verify(withProof(t, b, c.proof()), o)
			if !errors.Is(err, c.want) || !errors.Is(err, ErrLogProof) {
				t.Fatalf("err = %v, want %v and %v", err, c.want, ErrLogProof)
			}
			t.Log(err)
			if got := attest.ClassOf(err); got != c.class {
				t.Fatalf("class %s, want %s (%v)", got, c.class, err)
			}
		})
	}
}

// editBody returns a copy of proof's body with spec changed.
func editBody(t testing.TB, proof []byte, f func(spec map[string]any)) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(proof, &m); err != nil {
		t.Fatal(err)
	}
	b, _ := base64.StdEncoding.DecodeString(m["body"].(string))
	var body map[string]any
	if err := json.Unmarshal(b, &body); err != nil {
		t.Fatal(err)
	}
	f(body["spec"].(map[string]any))
	out, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRekorNoProof(t *testing.T) {
	f := newRekorFixture(t)
	_, err := Verify(encode(t, f.a.bundle), f.opts)
	if !errors.Is(err, ErrNoLogProof) {
		t.Fatalf("err = %v, want %v", err, ErrNoLogProof)
	}
	// A log verifier without a pinned key is a configuration error, never a pass.
	o := f.opts
	o.Log = &RekorVerifier{ManifestKeys: f.opts.Keys}
	if _, err := Verify(withProof(t, f.a.bundle, entry(t, f.log, f.a.index)), o); attest.ClassOf(err) != attest.ClassInternal {
		t.Fatalf("no log key: %v", err)
	}
}

// The envelope bytes a LogVerifier sees are exactly what EnvelopeBytes
// gives the publisher, also after the bundle went through indented JSON.
func TestEnvelopeBytesStable(t *testing.T) {
	f := newRekorFixture(t)
	proof := entry(t, f.log, f.a.index)
	c := *f.a.bundle
	c.LogProof = proof
	ind, err := json.MarshalIndent(&c, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(ind, f.opts); err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(f.a.env)
	if !strings.Contains(string(mustBody(t, proof)), hex.EncodeToString(h[:])) {
		t.Fatal("entry body does not carry the envelope's sha256")
	}
}

func mustBody(t testing.TB, proof []byte) []byte {
	t.Helper()
	e, err := ParseLogProof(proof)
	if err != nil {
		t.Fatal(err)
	}
	return e.Body
}

func FuzzParseLogProof(f *testing.F) {
	fx := newRekorFixture(f)
	good := entry(f, fx.log, fx.a.index)
	f.Add(good)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"body":1,"integratedTime":1,"logID":"x","logIndex":0,"verification":{"signedEntryTimestamp":"AA==","inclusionProof":{"checkpoint":"x","hashes":[],"logIndex":0,"rootHash":"00","treeSize":1}}}`))
	f.Add(editProof(f, good, func(m map[string]any) { delete(m, "verification") }))
	v := fx.opts.Log.(*RekorVerifier)
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseLogProof(b)
		if err == nil && (e.Raw.Verification == nil || e.Raw.Verification.InclusionProof == nil) {
			t.Fatal("parsed without an inclusion proof")
		}
		// The whole verification must not panic on any proof either.
		if _, err := v.Verify(fx.a.env, b); err == nil && string(b) != string(good) {
			// Only the one proof logged for this envelope (or an
			// equivalent JSON encoding of it) may verify.
			if _, perr := ParseLogProof(b); perr != nil {
				t.Fatalf("verified but does not parse: %v", perr)
			}
		}
	})
}
