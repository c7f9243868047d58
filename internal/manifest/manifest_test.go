package manifest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"testing"
	"testing/fstest"

	"github.com/google/go-cmp/cmp"
	"github.com/palisade-cc/palisade/internal/attest"
)

var testFiles = fstest.MapFS{
	"palisade.efi": {Data: bytes.Repeat([]byte("uki"), 1000)},
	"vmlinuz":      {Data: []byte("kernel")},
	"initrd.img":   {Data: []byte("initrd")},
}

func testManifest(t testing.TB, sv uint64) *Manifest {
	t.Helper()
	files, err := FileDigests(testFiles, []string{"palisade.efi", "vmlinuz", "initrd.img"})
	if err != nil {
		t.Fatal(err)
	}
	pcr := func(b byte) attest.HexBytes { return bytes.Repeat([]byte{b}, 32) }
	return &Manifest{
		Version: SchemaVersion, ImageVersion: "v1.2.3", SecurityVersion: sv, Files: files,
		References: []attest.Reference{{Profile: "tpm-uefi-sb-off-production", Platform: attest.PlatformTPM,
			TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{4: pcr(4), 9: pcr(9), 11: pcr(11)}}}},
		Keyd: []attest.Reference{{Profile: "keyd-tpm", Platform: attest.PlatformTPM,
			TPM: &attest.TPMReference{PCRs: map[int]attest.HexBytes{11: pcr(12)}}}},
		MinTCB: MinTCB{SNP: &attest.SNPTCB{BootLoader: 3, TEE: 0, SNP: 8, Microcode: 115}},
	}
}

func edKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func encode(t testing.TB, b *Bundle) []byte {
	t.Helper()
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func signed(t testing.TB, key crypto.Signer, sv uint64) []byte {
	t.Helper()
	b, err := Sign(testManifest(t, sv), key)
	if err != nil {
		t.Fatal(err)
	}
	return encode(t, b)
}

// okLog and badLog stand in for the Rekor verifier behind the LogVerifier
// seam: they test that Verify calls it and honours its answer.
type okLog struct{ called *bool }

func (l okLog) VerifyLogProof(env []byte, p json.RawMessage) error {
	*l.called = true
	if !bytes.Contains(env, []byte(PayloadType)) {
		return errors.New("log verifier did not get the envelope")
	}
	return nil
}

type badLog struct{}

func (badLog) VerifyLogProof([]byte, json.RawMessage) error {
	return errors.New("inclusion proof is for another entry")
}

func TestSignVerify(t *testing.T) {
	for name, key := range map[string]crypto.Signer{"ed25519": edKey(t), "p256": mustP256(t)} {
		t.Run(name, func(t *testing.T) {
			b := signed(t, key, 5)
			res, err := Verify(b, Options{Keys: []crypto.PublicKey{key.Public()}, LastAccepted: 5, AllowNoLogProof: true})
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(testManifest(t, 5), res.Manifest); d != "" {
				t.Errorf("manifest (-want +got):\n%s", d)
			}
			if res.Log != LogMissing {
				t.Errorf("log status %q, want %q", res.Log, LogMissing)
			}
			if err := res.Manifest.CheckFiles(testFiles); err != nil {
				t.Error(err)
			}
		})
	}
	// With a log verifier and a proof, the status says verified.
	key := edKey(t)
	bu, _ := Sign(testManifest(t, 1), key)
	bu.LogProof = json.RawMessage(`{"entry":"x"}`)
	called := false
	res, err := Verify(encode(t, bu), Options{Keys: []crypto.PublicKey{key.Public()}, Log: okLog{&called}})
	if err != nil || !called || res.Log != LogVerified {
		t.Fatalf("Verify with log = %v, called %v, status %q", err, called, res.Log)
	}
}

func mustP256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestPAE(t *testing.T) {
	// The example from the DSSE protocol spec.
	got := string(PAE("http://example.com/HelloWorld", []byte("hello world")))
	want := "DSSEv1 29 http://example.com/HelloWorld 11 hello world"
	if d := cmp.Diff(want, got); d != "" {
		t.Error(d)
	}
}

func TestDeny(t *testing.T) {
	key := edKey(t)
	pinned := []crypto.PublicKey{key.Public()}
	const sv = 7
	good := signed(t, key, sv)
	opts := Options{Keys: pinned, LastAccepted: sv, AllowNoLogProof: true}
	if _, err := Verify(good, opts); err != nil {
		t.Fatalf("valid bundle denied: %v", err)
	}
	decode := func(t *testing.T) *Bundle {
		var b Bundle
		if err := json.Unmarshal(good, &b); err != nil {
			t.Fatal(err)
		}
		return &b
	}
	deny := func(t *testing.T, b []byte, o Options, class attest.Class, want error) {
		t.Helper()
		_, err := Verify(b, o)
		if err == nil {
			t.Fatal("accepted")
		}
		if attest.ClassOf(err) != class || !errors.Is(err, want) {
			t.Fatalf("err = %v (class %s), want class %s and %v", err, attest.ClassOf(err), class, want)
		}
	}
	t.Run("flipped-payload-byte", func(t *testing.T) {
		b := decode(t)
		i := bytes.Index(b.DSSE.Payload, []byte("v1.2.3"))
		b.DSSE.Payload[i+1] ^= 1
		deny(t, encode(t, b), opts, attest.ClassChain, ErrSignature)
	})
	t.Run("flipped-signature-byte", func(t *testing.T) {
		b := decode(t)
		b.DSSE.Signatures[0].Sig[10] ^= 0x40
		deny(t, encode(t, b), opts, attest.ClassChain, ErrSignature)
	})
	t.Run("other-key", func(t *testing.T) {
		deny(t, signed(t, edKey(t), sv), opts, attest.ClassChain, ErrSignature)
	})
	t.Run("other-key-claims-pinned-keyid", func(t *testing.T) {
		b, _ := Sign(testManifest(t, sv), edKey(t))
		b.DSSE.Signatures[0].KeyID, _ = KeyID(key.Public())
		deny(t, encode(t, b), opts, attest.ClassChain, ErrSignature)
	})
	t.Run("payload-type", func(t *testing.T) {
		// Signed correctly, but as another type: PAE binds the type.
		b := decode(t)
		b.DSSE.PayloadType = "application/vnd.in-toto+json"
		deny(t, encode(t, b), opts, attest.ClassMalformed, ErrPayloadType)
	})
	t.Run("lower-security-version", func(t *testing.T) {
		deny(t, signed(t, key, sv-1), opts, attest.ClassTCB, ErrRollback)
	})
	t.Run("no-log-proof", func(t *testing.T) {
		o := opts
		o.AllowNoLogProof = false
		deny(t, good, o, attest.ClassChain, ErrNoLogProof)
	})
	t.Run("log-configured-proof-missing", func(t *testing.T) {
		o := opts
		o.AllowNoLogProof, o.Log = false, badLog{}
		deny(t, good, o, attest.ClassChain, ErrNoLogProof)
	})
	t.Run("log-proof-rejected", func(t *testing.T) {
		b := decode(t)
		b.LogProof = json.RawMessage(`{"entry":"other"}`)
		o := opts
		o.Log = badLog{}
		deny(t, encode(t, b), o, attest.ClassChain, ErrLogProof)
	})
	t.Run("unknown-field", func(t *testing.T) {
		b := bytes.Replace(good, []byte(`{"dsse"`), []byte(`{"extra":1,"dsse"`), 1)
		deny(t, b, opts, attest.ClassMalformed, ErrMalformed)
	})
	for _, name := range []string{"palisade.efi", "vmlinuz", "initrd.img"} {
		t.Run("flipped-file-byte/"+name, func(t *testing.T) {
			res, err := Verify(good, opts)
			if err != nil {
				t.Fatal(err)
			}
			fsys := fstest.MapFS{}
			for n, f := range testFiles {
				fsys[n] = &fstest.MapFile{Data: bytes.Clone(f.Data)}
			}
			fsys[name].Data[len(fsys[name].Data)/2] ^= 1
			err = res.Manifest.CheckFiles(fsys)
			if attest.ClassOf(err) != attest.ClassMeasurement || !errors.Is(err, ErrFileDigest) || !bytes.Contains([]byte(err.Error()), []byte(name)) {
				t.Fatalf("CheckFiles = %v, want a measurement denial naming %s", err, name)
			}
		})
	}
	t.Run("missing-file", func(t *testing.T) {
		res, _ := Verify(good, opts)
		fsys := fstest.MapFS{"vmlinuz": testFiles["vmlinuz"]}
		if err := res.Manifest.CheckFiles(fsys); !errors.Is(err, ErrFileDigest) {
			t.Fatalf("CheckFiles = %v", err)
		}
	})
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name, field string
		edit        func(*Manifest)
	}{
		{"version", "version", func(m *Manifest) { m.Version = 2 }},
		{"image", "image_version", func(m *Manifest) { m.ImageVersion = "" }},
		{"files", "files", func(m *Manifest) { m.Files = nil }},
		{"file name", `files["../x"]`, func(m *Manifest) { m.Files["../x"] = make([]byte, 32) }},
		{"digest", `files["vmlinuz"]`, func(m *Manifest) { m.Files["vmlinuz"] = []byte{1} }},
		{"refs", "references", func(m *Manifest) { m.References = nil }},
		{"ref", "references[0]", func(m *Manifest) { m.References[0].TPM.PCRs[4] = []byte{1} }},
		{"dup", "references[1]", func(m *Manifest) { m.References = append(m.References, m.References[0]) }},
		{"keyd", "keyd[0]", func(m *Manifest) { m.Keyd[0].Platform = "x" }},
		{"tdx tcb", "min_tcb", func(m *Manifest) { m.MinTCB.TDXTEETCBSVN = []byte{1} }},
	} {
		m := testManifest(t, 1)
		tc.edit(m)
		if err := m.Validate(); err == nil || !bytes.HasPrefix([]byte(err.Error()), []byte(tc.field)) {
			t.Errorf("%s: Validate = %v, want an error naming %s", tc.name, err, tc.field)
		}
	}
}

func FuzzVerify(f *testing.F) {
	key := edKey(f)
	f.Add(signed(f, key, 1))
	f.Add([]byte(`{"dsse":{"payloadType":"x","payload":"","signatures":[]}}`))
	f.Add([]byte(`{}`))
	opts := Options{Keys: []crypto.PublicKey{key.Public()}, AllowNoLogProof: true}
	f.Fuzz(func(t *testing.T, b []byte) {
		res, err := Verify(b, opts)
		if err == nil && (res.Manifest == nil || res.Manifest.Validate() != nil) {
			t.Fatal("accepted an invalid manifest")
		}
		if err != nil && attest.ClassOf(err) == attest.ClassInternal {
			t.Fatalf("internal error on input: %v", err)
		}
		_, _ = Decode(b)
	})
}

func BenchmarkVerify(b *testing.B) {
	key := edKey(b)
	bundle := signed(b, key, 3)
	opts := Options{Keys: []crypto.PublicKey{key.Public()}, LastAccepted: 3, AllowNoLogProof: true}
	for b.Loop() {
		res, err := Verify(bundle, opts)
		if err != nil {
			b.Fatal(err)
		}
		if err := res.Manifest.CheckFiles(testFiles); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFloor(b *testing.B) {
	key := edKey(b)
	var bu Bundle
	if err := json.Unmarshal(signed(b, key, 3), &bu); err != nil {
		b.Fatal(err)
	}
	pae := PAE(bu.DSSE.PayloadType, bu.DSSE.Payload)
	for b.Loop() {
		if !verifySig(key.Public(), pae, bu.DSSE.Signatures[0].Sig) {
			b.Fatal("signature")
		}
	}
}
